"""Fine-tuning attack alone, from a normal pre-trained model, a SOPHON checkpoint, or scratch.

    python classification/finetune_test.py --start sophon --path results/ice/.../checkpoints/final.safetensors
    python classification/finetune_test.py --start normal --attacks sgd,adam:1e-3
    python classification/finetune_test.py --compare --path ice0=RUN0/checkpoints/final.safetensors \
        ice1=RUN1/checkpoints/final.safetensors --suite standard     # normal, both, scratch; each judged
"""

from sophon.cli import finetune_test_main

if __name__ == "__main__":
    finetune_test_main(__doc__)
