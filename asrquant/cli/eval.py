"""asrquant-eval: test WER/CER and size of a checkpoint, optionally after PTQ (Hydra;
see conf/eval.yaml)."""

import hydra

from asrquant.cli.common import CONF_DIR, run_and_record
from asrquant.runs import run_eval, validate_config


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def main(cfg) -> None:
    run_and_record(lambda c, run_dir: run_eval(validate_config(c, "eval"), run_dir), cfg)


if __name__ == "__main__":
    main()
