"""Stage 1: anonymization training (fT / fA / fB inits and the TeD-SPAD minimax). See train.py and config.py."""
