"""ADMM inside training frameworks you already use: a PyTorch Lightning callback
(``lightning``) and a Hugging Face ``Trainer`` callback (``huggingface``). Each adds the
ADMM gradient before every optimizer step, runs the Z- and U-steps on a schedule of epochs,
hardens, and keeps the pruned weights at zero for the rest of training. Import the module
of your framework; this package imports neither."""
