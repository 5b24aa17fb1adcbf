"""Score frozen embeddings with SVM / Sad-first / linear / detection heads under speaker-independent protocols.

Exactly one embedding source (see docs/evaluation.md for the protocol rules):
  python evaluate.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt
  python evaluate.py backbone=ge2e data=emodb data.root=/data/emodb
  python evaluate.py embeddings=path/to/embeddings.npz
  python evaluate.py embeddings=A.npz eval.compare_to=B.npz      # paired comparison on identical folds
"""
from utils.entrypoint import launch


def main_task(cfg):
    from tasks.evaluate import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    launch(main_task, "evaluate.yaml")
