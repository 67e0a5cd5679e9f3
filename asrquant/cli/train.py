"""asrquant-train: float training or QAT fine-tuning (Hydra; see conf/train.yaml)."""

import hydra

from asrquant.cli.common import CONF_DIR, run_and_record
from asrquant.runs import run_train, validate_config


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg) -> None:
    run_and_record(lambda c, run_dir: run_train(validate_config(c, "train"), run_dir), cfg)


if __name__ == "__main__":
    main()
