"""SOPHON: non-fine-tunable learning (IEEE S&P 2024), as a small library.

One loop (`sophon.protect`) over three settings (text, image and diffusion tasks in
`sophon.settings`), a fine-tuning simulator (`sophon.simulate`), attacks (`sophon.attack`)
and the suppression losses (`sophon.losses`).
"""

__version__ = "0.1.0"
