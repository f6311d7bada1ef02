"""Audio: decoding, windows, the STFT front-end, one file to features, the synthetic corpus."""
