"""Training: the cached data (:mod:`.data`), how each objective family turns a batch into a
loss (:mod:`.methods`), the one loop (:mod:`.loop`) and its checkpoints (:mod:`.checkpoint`);
data parallelism across processes in :mod:`diffpref.distributed`."""

from diffpref.training.data import TrainData, load_train_data
from diffpref.training.loop import TrainResult, make_optimizer, train
from diffpref.training.methods import as_eps, make_method, online_error

__all__ = [
    "TrainData",
    "TrainResult",
    "as_eps",
    "load_train_data",
    "make_method",
    "make_optimizer",
    "online_error",
    "train",
]
