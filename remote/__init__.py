"""The remote split of Giorgi et al.'s system, as two commands on two machines.

``python -m remote.encode`` runs on the camera: it holds only the DP autoencoder's encoder
file and turns videos into latent code files (aux_code.latent_codes), reporting what one
frame costs to send as a code, as the H.264 input, as a JPEG. ``python -m remote.score``
runs on the server: it holds only the decoder file (paired with that encoder by digest),
the utility model fT and a stage-4 detector; it decodes the codes, extracts clip features
from the reconstructed frames and prints and plots the online anomaly score (SAS).
"""
