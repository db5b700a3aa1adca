"""Helpers the tooling shares (bench, finetuning, conversion, cli): process groups, progress
bars, option parsing. Nothing here imports the rest of dit_cache."""
