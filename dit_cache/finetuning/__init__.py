"""`dit_cache.finetune` and `load_finetuned` (api), their options (config), the training loop
(loop, model, batches, optim, checkpoints, dist, progress), the data (data/, sources) and the
result folder (io)."""
