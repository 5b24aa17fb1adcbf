"""Classifier heads fitted on frozen embeddings: the paper's RBF SVM, its Sad-first hierarchy,
a linear probe, a neutral-vs-emotional detector, (features=layer_stats only) a linear probe over a
learnt softmax-weighted combination of the encoder's layers, and (features=auto) a head that picks the
features and head of each fold on inner speaker-grouped folds of its training speakers.

All heads are sklearn estimators (`fit(X, y, groups=None)`, `predict`, clonable via get_params),
so sklearn's model selection tools work on them. Every head also says which labels it is scored
on (`scoring_labels` / `scoring_order`): the detector is scored on its binary task.

`predict_proba(X)` gives one probability per class of `classes_` (what predict.py reports). The
logistic heads have them natively; the SVM heads only when fitted with `probability=True` (Platt
scaling fitted on speaker-disjoint folds of the training rows; the decisions stay the plain SVM's),
which evaluate.py sets for the heads it exports, not for the cross-validated ones.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

log = logging.getLogger(__name__)

DETECTION_EMOTIONAL = "emotional"


def svm_group(eval_settings: dict, features: dict | None) -> dict:
    """`eval.svm`, with `eval.layer_stats_svm` on top for layer statistics (standardised columns, gamma=scale)."""
    group = dict(eval_settings.get("svm") or {})
    if (features or {}).get("output") == "layer_stats":
        extra = eval_settings.get("layer_stats_svm")
        group.update(dict(extra) if extra is not None else {"standardize": True, "gamma": "scale"})
    return group


class _ScoredOnOwnLabels:
    """Heads that predict the emotion classes themselves are scored on them unchanged.

    Every head also declares what the pipelines need to know of it (so no pipeline names a head):
    `features`: the feature outputs it can be fitted on; `settings(eval, features)`: its constructor
    arguments from the `eval` config block (a plain dict) and the features' description; `export_settings`:
    what the deployment refit adds (calibrated probabilities); `standardizes`: whether it standardises the
    columns (recorded in metrics.json); `svm_settings` / `with_nystroem`: its SVM parameter group, for the one
    Nystroem-or-exact decision of an evaluation (None: it has no SVM).
    """

    features: tuple[str, ...] = ("embedding", "layer_stats")

    def scoring_labels(self, y) -> np.ndarray:
        return np.asarray(y)

    def scoring_order(self, class_order) -> list[str]:
        return list(class_order)

    @classmethod
    def settings(cls, eval_settings: dict, features: dict | None) -> dict:
        return {}

    @classmethod
    def export_settings(cls, kwargs: dict) -> dict:
        return dict(kwargs)

    @classmethod
    def standardizes(cls, kwargs: dict) -> bool:
        return True

    @classmethod
    def svm_settings(cls, kwargs: dict) -> dict | None:
        return None

    @classmethod
    def with_nystroem(cls, kwargs: dict, used: bool) -> dict:
        return dict(kwargs)


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"heads expect X (N, D) and y (N,), got X {X.shape} and y {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"a head needs at least 2 classes in its training rows, got {np.unique(y).tolist()}")
    return X, y


class SVMHead(_ScoredOnOwnLabels, ClassifierMixin, BaseEstimator):
    """RBF SVM with the seed paper's C=1000, gamma=0.1 on raw (L2-normalised) embeddings.

    standardize: the paper fed sklearn's SVC the L2-normalised embeddings without scaling, so the
        default is False. gamma=0.1 is tuned for unit-norm inputs (squared distances in [0, 4]);
        with standardize=True use gamma="scale" or a grid, or the kernel degenerates to identity.
    param_grid: e.g. {"C": [1, 10, 100, 1000], "gamma": [0.01, 0.1, 1]}: choose by UA over
        `inner_folds` speaker-disjoint folds (GroupKFold on `groups`) of the training rows only.
    nystroem_threshold: exact SVC costs O(n^2)-O(n^3); above this many training rows a Nystroem
        kernel map (same gamma, `nystroem_components` landmarks) + a linear classifier is used.
    use_nystroem: the switch decided by the caller (True/False), so that every fit of one
        evaluation uses the same model; None decides once per `fit` from its rows, and grid-search
        inner folds then follow that decision (they never pick the exact SVC for a Nystroem refit).
    nystroem_solver: the linear classifier on the Nystroem features. "ridge" (default):
        RidgeClassifier with alpha = 1/(2C) (same regularisation ratio as the SVM objective), a
        closed-form solve: measured ~100x faster than "linear_svc" (LinearSVC with the same C) on
        20k overlapping-class rows at C=1000, where LinearSVC's solver is badly conditioned
        (scripts/benchmark_heads.py), with the same held-out UA.
    probability: also fit `predict_proba`: sklearn's sigmoid (Platt) calibration of the decision
        scores on `calibration_folds` speaker-disjoint folds of the training rows (GroupKFold on
        `groups`; stratified folds, recorded as not speaker-disjoint, without groups). `predict` stays
        the SVM fitted on all rows, so the calibrated probabilities can disagree with it near a boundary.
    """

    def __init__(
        self,
        C: float = 1000.0,
        gamma: float | str = 0.1,
        standardize: bool = False,
        class_weight: str | dict | None = None,
        param_grid: dict | None = None,
        inner_folds: int = 3,
        nystroem_threshold: int = 20_000,
        nystroem_components: int = 2000,
        nystroem_solver: str = "ridge",
        linear_max_iter: int = 10_000,
        cache_size_mb: float = 1000.0,
        use_nystroem: bool | None = None,
        probability: bool = False,
        calibration_folds: int = 5,
        random_state: int = 0,
    ):
        self.C = C
        self.gamma = gamma
        self.standardize = standardize
        self.class_weight = class_weight
        self.param_grid = param_grid
        self.inner_folds = inner_folds
        self.nystroem_threshold = nystroem_threshold
        self.nystroem_components = nystroem_components
        self.nystroem_solver = nystroem_solver
        self.linear_max_iter = linear_max_iter
        self.cache_size_mb = cache_size_mb
        self.use_nystroem = use_nystroem
        self.probability = probability
        self.calibration_folds = calibration_folds
        self.random_state = random_state

    @classmethod
    def settings(cls, eval_settings: dict, features: dict | None) -> dict:
        return svm_group(eval_settings, features)

    @classmethod
    def export_settings(cls, kwargs: dict) -> dict:
        return {**kwargs, "probability": True}

    @classmethod
    def standardizes(cls, kwargs: dict) -> bool:
        return bool(kwargs.get("standardize"))

    @classmethod
    def svm_settings(cls, kwargs: dict) -> dict | None:
        return kwargs

    @classmethod
    def with_nystroem(cls, kwargs: dict, used: bool) -> dict:
        return {**kwargs, "use_nystroem": used}

    def _resolve_gamma(self, X: np.ndarray) -> float:
        if self.gamma == "scale":  # sklearn SVC's rule, computed here so Nystroem gets the same value
            var = 1.0 if self.standardize else float(X.var())
            return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        if self.gamma == "auto":
            return 1.0 / X.shape[1]
        if isinstance(self.gamma, str) or not float(self.gamma) > 0:
            raise ValueError(f"SVMHead.gamma must be a positive float, 'scale' or 'auto', got {self.gamma!r}")
        return float(self.gamma)

    def _build(self, X: np.ndarray) -> Pipeline:
        steps = [("scale", StandardScaler())] if self.standardize else []
        gamma = self._resolve_gamma(X)
        n = len(X)
        self.gamma_ = gamma
        self.uses_nystroem_ = n > self.nystroem_threshold if self.use_nystroem is None else bool(self.use_nystroem)
        if self.uses_nystroem_:
            n_comp = min(self.nystroem_components, n)
            if self.nystroem_solver == "ridge":
                linear = RidgeClassifier(alpha=1.0 / (2.0 * self.C), class_weight=self.class_weight)
            elif self.nystroem_solver == "linear_svc":
                linear = LinearSVC(C=self.C, class_weight=self.class_weight, max_iter=self.linear_max_iter,
                                   random_state=self.random_state)
            else:
                raise ValueError(f"SVMHead.nystroem_solver must be 'ridge' or 'linear_svc', got {self.nystroem_solver!r}")
            # the caller that forced the switch reports it once; a standalone decision is reported here
            log.log(
                logging.WARNING if self.use_nystroem is None else logging.INFO,
                "SVMHead: %d training rows (nystroem_threshold=%d, use_nystroem=%s): approximating the RBF kernel "
                "with Nystroem(n_components=%d, gamma=%g) + %s (C=%g) instead of the exact SVC",
                n, self.nystroem_threshold, self.use_nystroem, n_comp, gamma, type(linear).__name__, self.C,
            )
            steps += [
                ("nystroem", Nystroem(kernel="rbf", gamma=gamma, n_components=n_comp, random_state=self.random_state)),
                ("svm", linear),
            ]
        else:
            steps.append(("svm", SVC(kernel="rbf", C=self.C, gamma=gamma, class_weight=self.class_weight,
                                     cache_size=self.cache_size_mb, random_state=self.random_state)))
        return Pipeline(steps)

    def fit(self, X, y, groups=None) -> "SVMHead":
        X, y = _check_xy(X, y)
        for stale in ("calibrated_", "calibration_"):  # a refit without probability must not keep old ones
            self.__dict__.pop(stale, None)
        if self.param_grid:
            self._fit_grid(X, y, groups)
        else:
            self.model_ = self._build(X).fit(X, y)
        self.classes_ = self.model_.classes_
        if self.probability:
            self._fit_calibration(X, y, groups)
        return self

    def _fit_calibration(self, X: np.ndarray, y: np.ndarray, groups) -> None:
        """Platt scaling of the decision scores, learnt on held-out folds (speakers unseen by their fit)."""
        n_groups = 0 if groups is None else len(np.unique(groups))
        folds = min(int(self.calibration_folds), n_groups) if groups is not None else int(self.calibration_folds)
        if folds < 2:
            raise ValueError(f"SVMHead probability=True: calibration needs >= 2 folds, got calibration_folds="
                             f"{self.calibration_folds} and {n_groups} speaker group(s)")
        if groups is not None:
            splits = list(GroupKFold(n_splits=folds, shuffle=True, random_state=self.random_state).split(X, y, groups))
        else:
            log.info("SVMHead: calibration folds without speaker groups are not speaker-disjoint")
            splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state).split(X, y))
        self.calibrated_ = CalibratedClassifierCV(clone(self.model_), method="sigmoid", cv=splits, ensemble=False)
        self.calibrated_.fit(X, y)
        self.calibration_ = {"method": "sigmoid", "folds": folds, "speaker_disjoint": groups is not None}

    def predict_proba(self, X) -> np.ndarray:
        """(N, len(classes_)) calibrated probabilities; needs probability=True at fit time."""
        if not hasattr(self, "calibrated_"):
            raise ValueError("SVMHead.predict_proba: this head was fitted without probability=True "
                             "(its decision scores are not probabilities); refit with probability=True")
        proba = self.calibrated_.predict_proba(np.asarray(X))
        if list(self.calibrated_.classes_) != list(self.classes_):  # same labels, sklearn sorts both
            raise RuntimeError("SVMHead: calibrated class order differs from the head's")
        return proba

    def _fit_grid(self, X: np.ndarray, y: np.ndarray, groups) -> None:
        tunable = set(self.get_params()) - {"param_grid", "use_nystroem"}
        unknown = sorted(set(self.param_grid) - tunable)
        if unknown:
            raise ValueError(f"SVMHead.param_grid: unknown parameter(s) {unknown}; tunable: {sorted(tunable)}")
        if groups is None:
            raise ValueError("SVMHead grid search needs `groups` (speaker ids) for speaker-independent inner folds")
        groups = np.asarray(groups)
        n_groups = len(np.unique(groups))
        if n_groups < self.inner_folds:
            raise ValueError(
                f"SVMHead grid search: {n_groups} training speakers < inner_folds={self.inner_folds}; "
                "lower inner_folds or drop param_grid"
            )
        # Decided once from all training rows: inner folds (fewer rows) must fit the same model as the refit.
        use_nystroem = len(X) > self.nystroem_threshold if self.use_nystroem is None else bool(self.use_nystroem)
        search = GridSearchCV(
            clone(self).set_params(param_grid=None, use_nystroem=use_nystroem, probability=False),
            {k: list(v) for k, v in self.param_grid.items()},
            scoring="balanced_accuracy",
            cv=GroupKFold(n_splits=self.inner_folds, shuffle=True, random_state=self.random_state),
            refit=True,
            error_score="raise",
        )
        search.fit(X, y, groups=groups)
        best = search.best_estimator_
        self.model_, self.gamma_, self.uses_nystroem_ = best.model_, best.gamma_, best.uses_nystroem_
        self.best_params_ = dict(search.best_params_)
        self.best_score_ = float(search.best_score_)
        log.info("SVMHead grid search: best %s (inner UA %.4f)", self.best_params_, self.best_score_)

    def predict(self, X) -> np.ndarray:
        return self.model_.predict(np.asarray(X))


SVM_PARAMS = tuple(inspect.signature(SVMHead.__init__).parameters)[1:]


class SadFirstHead(_ScoredOnOwnLabels, ClassifierMixin, BaseEstimator):
    """Seed paper's hierarchy: stage 1 separates sad from the rest (sad is the most distinct in
    speaker-embedding space); stage 2, trained on non-sad rows only, labels what stage 1 called rest.

    svm: the parameters of both stages, one `SVMHead` parameter group (e.g. {"C": 1000, "gamma": 0.1});
        unset ones keep SVMHead's defaults. `class_weight` and `random_state` apply to both stages
        (set like every head's), overriding the group's. With `svm={"probability": True, ...}` both
        stages are calibrated (see SVMHead) and `predict_proba` combines them:
        P(sad) = p1 (stage 1), P(c) = (1 - p1) * p2(c) for the other classes (stage 2).
    """

    def __init__(self, sad_label: str = "sad", svm: dict | None = None, class_weight: str | dict | None = None,
                 random_state: int = 0):
        self.sad_label = sad_label
        self.svm = svm
        self.class_weight = class_weight
        self.random_state = random_state

    @classmethod
    def settings(cls, eval_settings: dict, features: dict | None) -> dict:
        return {"svm": svm_group(eval_settings, features)}

    @classmethod
    def export_settings(cls, kwargs: dict) -> dict:
        return {**kwargs, "svm": {**(kwargs.get("svm") or {}), "probability": True}}

    @classmethod
    def standardizes(cls, kwargs: dict) -> bool:
        return bool((kwargs.get("svm") or {}).get("standardize"))

    @classmethod
    def svm_settings(cls, kwargs: dict) -> dict | None:
        return kwargs.get("svm") or {}

    @classmethod
    def with_nystroem(cls, kwargs: dict, used: bool) -> dict:
        return {**kwargs, "svm": {**(kwargs.get("svm") or {}), "use_nystroem": used}}

    def check_arguments(self) -> None:
        unknown = sorted(set(self.svm or {}) - set(SVM_PARAMS))
        if unknown:
            raise ValueError(f"head 'sad_first': unknown svm parameter(s) {unknown}; valid: {list(SVM_PARAMS)}")

    def _stage(self) -> SVMHead:
        self.check_arguments()
        params = dict(self.svm or {})
        params["random_state"] = self.random_state
        if self.class_weight is not None:
            params["class_weight"] = self.class_weight
        return SVMHead(**params)

    def fit(self, X, y, groups=None) -> "SadFirstHead":
        X, y = _check_xy(X, y)
        is_sad = y == self.sad_label
        if not is_sad.any():
            raise ValueError(
                f"SadFirstHead: label {self.sad_label!r} not in the training labels {np.unique(y).tolist()}; "
                "set sad_label or use another head"
            )
        rest_classes = np.unique(y[~is_sad])
        if len(rest_classes) < 2:
            raise ValueError(f"SadFirstHead: stage 2 needs >= 2 non-sad classes, got {rest_classes.tolist()}")
        groups = None if groups is None else np.asarray(groups)
        self.stage1_ = self._stage().fit(X, is_sad.astype(np.int64), groups)
        self.stage2_ = self._stage().fit(X[~is_sad], y[~is_sad], None if groups is None else groups[~is_sad])
        self.classes_ = np.unique(y)
        return self

    def predict_stages(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(rows stage 1 called sad, final predictions): stage 2 runs only on the other rows."""
        X = np.asarray(X)
        routed_sad = self.stage1_.predict(X) == 1
        pred = np.full(len(X), self.sad_label, dtype=self.classes_.dtype)
        if (~routed_sad).any():
            pred[~routed_sad] = self.stage2_.predict(X[~routed_sad])
        return routed_sad, pred

    def predict(self, X) -> np.ndarray:
        return self.predict_stages(X)[1]

    def predict_proba(self, X) -> np.ndarray:
        """(N, len(classes_)): P(sad) = p1, P(c) = (1 - p1) p2(c); needs svm={"probability": True} at fit time."""
        X = np.asarray(X)
        p_sad = self.stage1_.predict_proba(X)[:, self.stage1_.classes_.tolist().index(1)]
        p_rest = self.stage2_.predict_proba(X)
        classes = self.classes_.tolist()
        out = np.zeros((len(X), len(classes)))
        out[:, classes.index(self.sad_label)] = p_sad
        for j, c in enumerate(self.stage2_.classes_.tolist()):
            out[:, classes.index(c)] = (1.0 - p_sad) * p_rest[:, j]
        return out


class LinearProbeHead(_ScoredOnOwnLabels, ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression: how linearly emotion is encoded."""

    def __init__(self, C: float = 1.0, class_weight: str | dict | None = None, max_iter: int = 5000,
                 random_state: int = 0):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def _logreg(self) -> Pipeline:
        return Pipeline([
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter,
                                          random_state=self.random_state)),
        ])

    def fit(self, X, y, groups=None) -> "LinearProbeHead":
        X, y = _check_xy(X, y)
        self.model_ = self._logreg().fit(X, y)
        n_iter = int(np.max(self.model_.named_steps["logreg"].n_iter_))
        if n_iter >= self.max_iter:
            log.warning("%s: logistic regression hit max_iter=%d without converging", type(self).__name__, self.max_iter)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X) -> np.ndarray:
        return self.model_.predict(np.asarray(X))

    def predict_proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(np.asarray(X))


class DetectionHead(LinearProbeHead):
    """Neutral vs emotional (any non-neutral class), class-balanced by default since neutral is
    usually a minority against the pooled emotions; predicts and is scored on the binary labels."""

    def __init__(self, neutral_label: str = "neutral", C: float = 1.0, class_weight: str | dict | None = "balanced",
                 max_iter: int = 5000, random_state: int = 0):
        super().__init__(C=C, class_weight=class_weight, max_iter=max_iter, random_state=random_state)
        self.neutral_label = neutral_label

    def scoring_labels(self, y) -> np.ndarray:
        y = np.asarray(y)
        return np.where(y == self.neutral_label, self.neutral_label, DETECTION_EMOTIONAL)

    def scoring_order(self, class_order) -> list[str]:
        return [self.neutral_label, DETECTION_EMOTIONAL]

    def fit(self, X, y, groups=None) -> "DetectionHead":
        y = np.asarray(y)
        if not (y == self.neutral_label).any():
            raise ValueError(
                f"DetectionHead: label {self.neutral_label!r} not in the training labels {np.unique(y).tolist()}; "
                "set neutral_label or drop the detection head"
            )
        return super().fit(X, self.scoring_labels(y), groups)


class WeightedLayersHead(_ScoredOnOwnLabels, ClassifierMixin, BaseEstimator):
    """Linear probe over a learnt softmax-weighted combination of layers (s3prl's featurizer idea).

    Input: per-layer pooled features side by side (`features=layer_stats`: layer l's mean and std take
    `layer_widths[l]` consecutive columns). Each column is standardised on the training rows, then

        logits = sum_l softmax(a)_l * (x_l @ W_l) + b,

    one linear map W_l per layer (the layers differ in width, and a stacked LSTM's units are not
    aligned across layers, so they are not summed as s3prl sums a transformer's hidden states).
    Objective: mean (class-weighted) cross-entropy + sum_l w_l ||W_l||^2 / (2 C n), w = softmax(a).
    In terms of each layer's effective map P_l = w_l W_l the penalty is sum_l ||P_l||^2 / w_l, whose
    minimum over the weights is at w_l = ||P_l|| / sum_k ||P_k|| (a squared group lasso, convex in P):
    the learnt `layer_weights_` (summing to 1) are each layer's share of what the probe uses. (A plain
    sum_l ||W_l||^2 = sum_l ||P_l||^2 / w_l^2 was tried first: a non-convex penalty that put all the
    weight on one layer and scored lower on EmoDB, BENCHMARKS.md.) Fitted by full-batch L-BFGS from
    a = 0 (equal weights), W = 0: deterministic, nothing random.

    layer_widths: columns of each layer (evaluate.py passes them for features=layer_stats and refuses
    the head for other features); None = all columns one layer (a standardised logistic probe).
    """

    def __init__(self, layer_widths: list[int] | None = None, layer_names: list[str] | None = None, C: float = 1.0,
                 class_weight: str | dict | None = None, max_iter: int = 500, random_state: int = 0):
        self.layer_widths = layer_widths
        self.layer_names = layer_names
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    features = ("layer_stats",)

    @classmethod
    def settings(cls, eval_settings: dict, features: dict | None) -> dict:
        from evaluation.layer_features import layer_columns

        return {**dict(eval_settings.get("weighted_layers") or {}),
                "layer_widths": [b - a for a, b in layer_columns(features)],
                "layer_names": [str(layer["name"]) for layer in features["layers"]]}

    def check_arguments(self) -> None:
        if self.layer_widths is not None and not len(self.layer_widths):
            raise ValueError("head 'weighted_layers': layer_widths=[] describes no layer")
        if self.layer_widths is not None and any(int(w) < 1 for w in self.layer_widths):
            raise ValueError(f"head 'weighted_layers': layer_widths must be positive, got {self.layer_widths}")
        if self.layer_names is not None and len(self.layer_names) != len(self.layer_widths or [0]):
            raise ValueError(f"head 'weighted_layers': {len(self.layer_names)} layer_names for "
                             f"{len(self.layer_widths)} layer_widths")
        if not float(self.C) > 0:
            raise ValueError(f"head 'weighted_layers': C must be > 0, got {self.C}")

    def fit(self, X, y, groups=None) -> "WeightedLayersHead":
        import torch
        from sklearn.utils.class_weight import compute_sample_weight

        self.check_arguments()
        X, y = _check_xy(X, y)
        widths = [int(w) for w in self.layer_widths] if self.layer_widths is not None else [X.shape[1]]
        if sum(widths) != X.shape[1]:
            raise ValueError(f"head 'weighted_layers': layer_widths {widths} sum to {sum(widths)} columns, "
                             f"the features have {X.shape[1]}")
        self.scaler_ = StandardScaler().fit(X)
        self.classes_, target = np.unique(y, return_inverse=True)
        z = torch.from_numpy(self.scaler_.transform(X)).double()
        t = torch.from_numpy(target)
        w_rows = torch.from_numpy(compute_sample_weight(self.class_weight, y)).double() if self.class_weight else None
        n, n_classes, n_layers = len(z), len(self.classes_), len(widths)
        owner = torch.repeat_interleave(torch.arange(n_layers), torch.tensor(widths))  # column -> layer
        coef = torch.zeros(z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        layer_logits = torch.zeros(n_layers, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([coef, bias, layer_logits], max_iter=int(self.max_iter), line_search_fn="strong_wolfe",
                                tolerance_grad=1e-7, tolerance_change=1e-10)

        def closure():
            opt.zero_grad()
            weights = layer_logits.softmax(0)[owner]
            ce = torch.nn.functional.cross_entropy(z @ (coef * weights[:, None]) + bias, t, reduction="none")
            loss = (ce * w_rows).sum() / n if w_rows is not None else ce.mean()
            loss = loss + (coef.square().sum(1) * weights).sum() / (2.0 * float(self.C) * n)
            loss.backward()
            return loss

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matrices: one thread, like the BLAS limit of run_heads (busy 2-core boxes)
        try:
            with torch.enable_grad():
                opt.step(closure)
        finally:
            torch.set_num_threads(threads)
        self.n_iter_ = int(opt.state[coef].get("n_iter", 0))
        if self.n_iter_ >= int(self.max_iter):
            log.warning("WeightedLayersHead: L-BFGS hit max_iter=%d without converging", self.max_iter)
        with torch.no_grad():
            weights = layer_logits.softmax(0)
            self.layer_weights_ = weights.numpy().copy()
            self.coef_ = (coef * weights[owner][:, None]).numpy().copy()  # effective map of the standardised columns
            self.intercept_ = bias.numpy().copy()
        return self

    def layer_weight_table(self) -> dict[str, float]:
        names = self.layer_names or [f"layer{i}" for i in range(len(self.layer_weights_))]
        return {str(n): float(w) for n, w in zip(names, self.layer_weights_)}

    def decision_function(self, X) -> np.ndarray:
        return self.scaler_.transform(np.asarray(X)) @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        logits = self.decision_function(X)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]


class AutoFeaturesHead(_ScoredOnOwnLabels, ClassifierMixin, BaseEstimator):
    """Picks the features and the head for a fold from its training speakers alone (`features=auto`).

    Input: the final embedding and every layer's statistics side by side (`features=auto`: `embedding_dim`
    columns, then `layer_widths`). Candidates (`candidates()`): the SVM and the linear probe on the embedding,
    the linear probe on all layers' statistics, on every single layer, on all but the first (the encoder's
    input, e.g. GE2E's mel) and on the top half, and weighted_layers, each over a small grid of C. Each is
    scored by UA over `inner_folds` speaker-grouped folds of the training rows (GroupKFold on the speakers:
    a test speaker of the outer fold is never among them); the best (ties: the earlier, simpler candidate) is
    refit on all training rows. `pick_` says what was chosen and `inner_scores_` what every candidate scored.
    """

    def __init__(self, embedding_dim: int = 0, layer_widths: list[int] | None = None,
                 layer_names: list[str] | None = None, inner_folds: int = 4, svm: dict | None = None,
                 linear_C: list[float] | None = None, svm_C: list[float] | None = None,
                 weighted_layers_C: list[float] | None = None, class_weight: str | dict | None = None,
                 random_state: int = 0):
        self.embedding_dim = embedding_dim
        self.layer_widths = layer_widths
        self.layer_names = layer_names
        self.inner_folds = inner_folds
        self.svm = svm
        self.linear_C = linear_C
        self.svm_C = svm_C
        self.weighted_layers_C = weighted_layers_C
        self.class_weight = class_weight
        self.random_state = random_state

    features = ("auto",)

    @classmethod
    def settings(cls, eval_settings: dict, features: dict | None) -> dict:
        from evaluation.layer_features import auto_parts, layer_columns

        emb_dim, stats = auto_parts(features)
        plain_svm = dict(eval_settings.get("svm") or {})
        plain_svm.pop("param_grid", None)
        return {**dict(eval_settings.get("auto") or {}), "embedding_dim": emb_dim, "svm": plain_svm,
                "layer_widths": [b - a for a, b in layer_columns(stats)],
                "layer_names": [str(layer["name"]) for layer in stats["layers"]]}

    @classmethod
    def export_settings(cls, kwargs: dict) -> dict:  # in case its pick is the SVM
        return {**kwargs, "svm": {**(kwargs.get("svm") or {}), "probability": True}}

    def check_arguments(self) -> None:
        if int(self.embedding_dim) < 0 or any(int(w) < 1 for w in self.layer_widths or []):
            raise ValueError(f"head 'auto': embedding_dim={self.embedding_dim}, layer_widths={self.layer_widths}")
        if int(self.inner_folds) < 2:
            raise ValueError(f"head 'auto': inner_folds={self.inner_folds}: expected >= 2")

    def _embedding_dim(self) -> int:
        return int(getattr(self, "embedding_dim_", self.embedding_dim))

    def _layer_cols(self) -> list[np.ndarray]:
        out, start = [], self._embedding_dim()
        for w in self.layer_widths or []:
            out.append(np.arange(start, start + int(w)))
            start += int(w)
        return out

    def candidates(self) -> list[tuple[str, np.ndarray, str, dict]]:
        """(name, columns, head, head kwargs) in order of preference (simpler first)."""
        linear_c = list(self.linear_C or [0.01, 0.1, 1.0])
        svm_c = list(self.svm_C or [10.0, 100.0, 1000.0])
        wl_c = list(self.weighted_layers_C or [0.1, 1.0])
        base = {"class_weight": self.class_weight, "random_state": self.random_state}
        out = []
        emb = np.arange(self._embedding_dim())
        if len(emb):
            out += [(f"embedding/svm C={c:g}", emb, "svm", {**(self.svm or {}), **base, "C": c}) for c in svm_c]
            out += [(f"embedding/linear C={c:g}", emb, "linear", {**base, "C": c}) for c in linear_c]
        cols = self._layer_cols()
        if cols:
            names = list(self.layer_names or [f"layer{i}" for i in range(len(cols))])
            subsets = [("layer_stats", list(range(len(cols))))]
            if len(cols) > 2:
                subsets.append((f"layer_stats[{','.join(names[1:])}]", list(range(1, len(cols)))))
                top = list(range(len(cols) // 2, len(cols)))
                if top != subsets[-1][1]:
                    subsets.append((f"layer_stats[{','.join(names[i] for i in top)}]", top))
            if len(cols) > 1:
                subsets += [(f"layer_stats[{names[i]}]", [i]) for i in range(len(cols))]
            for name, idx in subsets:
                c_idx = np.concatenate([cols[i] for i in idx])
                out += [(f"{name}/linear C={c:g}", c_idx, "linear", {**base, "C": c}) for c in linear_c]
            if len(cols) > 1:
                every = np.concatenate(cols)
                out += [(f"layer_stats/weighted_layers C={c:g}", every, "weighted_layers",
                         {**base, "C": c, "layer_widths": [int(w) for w in self.layer_widths],
                          "layer_names": names}) for c in wl_c]
        return out

    def fit(self, X, y, groups=None) -> "AutoFeaturesHead":
        from evaluation.metrics import unweighted_accuracy

        self.check_arguments()
        X, y = _check_xy(X, y)
        # without a layout (not features=auto) every column is one embedding: the pick is then the head and its C
        self.embedding_dim_ = int(self.embedding_dim) or (0 if self.layer_widths else X.shape[1])
        if groups is None:
            raise ValueError("head 'auto' picks on speaker-grouped inner folds: it needs the speakers (groups)")
        groups = np.asarray(groups)
        n_groups = len(np.unique(groups))
        k = min(int(self.inner_folds), n_groups)
        if k < 2:
            raise ValueError(f"head 'auto': {n_groups} training speaker(s): the inner folds need at least 2")
        splits = list(GroupKFold(n_splits=k, shuffle=True, random_state=self.random_state).split(X, y, groups))
        scores = {}
        for name, cols, head, kwargs in self.candidates():
            fold_scores = []
            for tr, te in splits:
                if len(np.unique(y[tr])) < 2:
                    continue
                h = make_head(head, **kwargs).fit(X[tr][:, cols], y[tr], groups=groups[tr])
                fold_scores.append(unweighted_accuracy(y[te], h.predict(X[te][:, cols])))
            scores[name] = float(np.mean(fold_scores)) if fold_scores else float("nan")
        best = max(scores, key=lambda n: (np.nan_to_num(scores[n], nan=-1.0), -list(scores).index(n)))
        _, cols, head, kwargs = next(c for c in self.candidates() if c[0] == best)
        self.columns_, self.pick_, self.inner_scores_ = cols, best, scores
        self.model_ = make_head(head, **kwargs).fit(X[:, cols], y, groups=groups)
        self.best_params_ = {"pick": best, "inner_ua": scores[best], "inner_folds": k}
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X) -> np.ndarray:
        return self.model_.predict(np.asarray(X)[:, self.columns_])

    def predict_proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(np.asarray(X)[:, self.columns_])


HEADS: dict[str, type] = {
    "svm": SVMHead,
    "sad_first": SadFirstHead,
    "linear": LinearProbeHead,
    "detection": DetectionHead,
    "weighted_layers": WeightedLayersHead,
    "auto": AutoFeaturesHead,
}


def head_class(name: str) -> type:
    """A registered head, or any class given by its import path (`eval.heads=[linear, my_pkg.MyHead]`): a
    scikit-learn classifier with `fit(X, y, groups=None)` and `predict`, and the declarations of
    `_ScoredOnOwnLabels` (inherit it for the defaults)."""
    if name in HEADS:
        return HEADS[name]
    if "." in name:
        import importlib

        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"head {name!r}: cannot import it ({e}); registered heads: {sorted(HEADS)}") from e
        missing = [m for m in ("fit", "predict", "settings", "features", "scoring_labels", "scoring_order")
                   if not hasattr(cls, m)]
        if not isinstance(cls, type) or missing:
            raise ValueError(f"head {name!r} is not a head class (missing {missing}): subclass "
                             "evaluation.heads._ScoredOnOwnLabels and scikit-learn's ClassifierMixin, BaseEstimator")
        return cls
    raise ValueError(f"unknown head {name!r}; available heads: {sorted(HEADS)} (or an import path)")


def head_params(name: str) -> list[str]:
    return list(inspect.signature(head_class(name).__init__).parameters)[1:]


def make_head(name: str, **kwargs):
    """Instantiate a registered head, rejecting misspelt arguments instead of ignoring them."""
    valid = head_params(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"head {name!r}: unknown argument(s) {unknown}; valid arguments: {valid}")
    head = head_class(name)(**kwargs)
    if hasattr(head, "check_arguments"):  # nested parameter groups, checked before any fit
        head.check_arguments()
    return head
