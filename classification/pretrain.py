"""Pre-train the original-domain model (cached): tiny-gpt2 on NEWS, or an image classifier.

    python classification/pretrain.py --arch tiny-gpt2              # -> classification/pretrained/tiny-gpt2_NEWS/
    python classification/pretrain.py --arch cnn                    # -> classification/pretrained/cnn_FASHION.*
"""

from sophon.cli import pretrain_main

if __name__ == "__main__":
    pretrain_main(__doc__)
