"""LUSS-AE (Lohani et al., VISAPP 2023): an unsupervised stage-4 detector beside MGFN (issue 17).

``python -m anomaly_detection.luss --config configs/synthetic/luss/<dataset>.yaml key=value ...``
trains the 3DCAE with clip reconstruction, future-frame prediction and playback-rate prediction
on the normal training videos of UCSD Ped2, CUHK Avenue or ShanghaiTech (unsupervised split),
selects on a held-out part of them, and scores the test videos (results.json, score plots).
"""
