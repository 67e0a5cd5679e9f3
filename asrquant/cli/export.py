"""asrquant-export: write a quantized model as one packed safetensors file (Hydra; see
conf/export.yaml)."""

import hydra

from asrquant.cli.common import CONF_DIR, run_and_record
from asrquant.runs import run_export


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
def main(cfg) -> None:
    run_and_record(run_export, cfg)


if __name__ == "__main__":
    main()
