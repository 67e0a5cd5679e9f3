"""Training runs unchanged under Lightning DDP: two CPU processes (gloo) end with identical
weights after seeing different batches."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import hashlib, json, sys
    import lightning as L
    import torch
    from asrquant.data.datamodule import ASRDataModule
    from asrquant.data.synthetic import build_synthetic_corpus
    from asrquant.data.tokenizer import CharTokenizer
    from asrquant.lightning.module import ASRModule
    from asrquant.models.sizes import size_config

    out, cache = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    L.seed_everything(0)
    paths = build_synthetic_corpus(cache, n_train=16, n_dev=4, n_test=2, n_test_voices=2,
                                   progress=False)
    tok = CharTokenizer()
    cfg = size_config("cpu", tok.vocab_size, d_model=32, num_layers=1, ffn_dim=64,
                      subsampling_channels=8)
    module = ASRModule(cfg, tok, lr=1e-3, warmup_steps=2)

    class Record(L.Callback):
        seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen += list(batch["ids"])

        def on_train_end(self, trainer, pl_module):
            digest = hashlib.sha256()
            for p in pl_module.parameters():
                digest.update(p.detach().numpy().tobytes())
            with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
                json.dump({"hash": digest.hexdigest(), "ids": self.seen,
                           "world": trainer.world_size, "steps": trainer.global_step}, f)

    dm = ASRDataModule(tok, train=paths["train"], val=None, max_batch_seconds=8.0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, callbacks=[Record()])
    trainer.fit(module, datamodule=dm)
''')


def test_two_ddp_cpu_processes_agree_on_the_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    cache = tmp_path / "corpus"
    subprocess.run([sys.executable, "-c",
                    "from asrquant.data.synthetic import build_synthetic_corpus as b; import sys;"
                    "b(sys.argv[1], n_train=16, n_dev=4, n_test=2, n_test_voices=2, "
                    "progress=False)", str(cache)], check=True, timeout=300)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(cache)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] == 3
    assert r0["hash"] == r1["hash"]
    assert not set(r0["ids"]) & set(r1["ids"])  # each rank trained on its own shard
