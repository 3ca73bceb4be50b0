"""The channel structure of a network: which layers share channels (``groups``) and how
pruned units are removed for a smaller model (``compact``). Plain torch and torch.fx."""
