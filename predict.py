"""Apply a trained SER model to audio:  python predict.py ckpt_path=<model> inputs=<folder | file | [files]>

ckpt_path: a bundle evaluate.py exported (<run>/model, or the evaluate run folder) or a SER checkpoint
(docs/predict.md). Writes <run>/predictions.csv: every input file with its status, predicted emotion and
one probability column per class.
  python predict.py ckpt_path=logs/evaluate/runs/<timestamp>/model inputs=my_clips/
  python predict.py ckpt_path=logs/evaluate/runs/<timestamp> inputs=[a.wav,b.flac] head=svm
"""
from utils.entrypoint import launch


def main_task(cfg):
    from tasks.predict import predict

    predict(cfg)


if __name__ == "__main__":
    launch(main_task, "predict.yaml")
