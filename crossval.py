"""Does training objective X beat the encoder it starts from, on speakers it never met?

    python crossval.py experiment=contrastive_mtl data=emodb data.root=/data/emodb
    python crossval.py experiment=ser_finetune data=emodb data.root=/data/emodb model.freeze=all
    python crossval.py experiment=ser_finetune data=emodb data.root=/data/emodb crossval.pretrain=[experiment=contrastive_mtl]

Trains the experiment on every fold of evaluate.py's plan (eval.n_folds x eval.repeats), scores it and the
encoder it starts from on the same test speakers, and writes comparison.json, results.md and a plot of the
paired folds (tasks/crossval.py, docs/crossval.md). A rerun continues the folds already done.
"""
from utils.entrypoint import launch


def main_task(cfg):
    from tasks.crossval import crossval

    crossval(cfg)


if __name__ == "__main__":
    launch(main_task, "crossval.yaml")
