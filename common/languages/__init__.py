"""Per-language text processing: Shona G2P and number reading."""
