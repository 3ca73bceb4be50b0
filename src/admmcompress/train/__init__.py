"""Training with plain values: the epoch loop and evaluation (``loop``), optimizers and
schedules by name (``optim``), distillation, retraining that ends on a quantization grid
(``quantized``) and data-parallel runs under torchrun (``distributed``)."""
