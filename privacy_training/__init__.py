"""Stage 2: privacy evaluation (VISPR target model, feature-level probe, image-level leakage).

Run ``python -m privacy_training --config FILE key=value ...``; see privacy_training.train.
"""
