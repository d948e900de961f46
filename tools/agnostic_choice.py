"""Choose a class-agnostic model's prior graph and correction on TRAIN images (never on val).

For each dataset: the model with its prior on the 4- and on the 16-connected graph, each with its learned
correction (the head) and without it (prior alone); 20 train images, one draw of holes, paper protocol.
``any-m0.5`` was chosen with it (hub/any-m0.5/README.md)::

    python tools/agnostic_choice.py runs/agnostic/all/last camvid,ccp,carparts,wbc,marsscapes,dronedeploy
"""

import copy
import dataclasses
import sys

import torch

from torch_label_mae import LabelCompleter
from torch_label_mae.completer import with_correction
from torch_label_mae.data import FolderDataset
from torch_label_mae.evaluate import completer_method, evaluate

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
folder, names = sys.argv[1], sys.argv[2].split(",")
base = LabelCompleter.from_folder(folder, device="cpu", precision="float32")


def variant(conn, bare):
    c = copy.deepcopy(base)
    c.config.prior = dataclasses.replace(c.config.prior, connectivity=conn)
    return with_correction(c, 0.0) if bare else c


out = {}
for name in names:
    ds = FolderDataset(f"../shared/data/{name}", "train")
    for conn in (4, 16):
        for bare in (False, True):
            m = evaluate(completer_method(variant(conn, bare)), ds, ds.info.num_classes, limit=20, seed=[0])
            key = f"{name} {'prior' if bare else 'model'} {conn}"
            out[key] = round(100 * m["pa_miou"], 2)
            print(key, out[key], round(m["images_per_s"], 1), flush=True)
