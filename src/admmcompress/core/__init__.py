"""What a user's own training loop drives: ADMM state (``admm``), masks that hold under any
optimizer (``masking``), rules resolved to layers (``selection``) and verification
(``verify``). Imports nothing but the constraints."""
