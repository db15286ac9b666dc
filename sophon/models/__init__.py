"""Model registry: HF causal LMs (text), torchvision/timm classifiers (images), diffusers UNets."""
