"""Objectives: how advantages become a loss (sde, matching, nft)."""
