"""Fast inference of compressed models: CSR twins of Linear and Conv2d (``sparse``)."""
