"""Where the paper's linear-evaluation tables put their numbers (mean, std over three seeds).

Each method's file holds its own rows (`PAPER`, built with `cells`); this module only knows the
tables' columns: which backbone, pretraining and evaluation dataset each column holds.
Table 2 and the transfer/grain tables used 200 epochs and the paper's K (32, or 16 for ResNet-32
on tiny-ImageNet).
"""

from __future__ import annotations

Cell = tuple[float, float]
Key = tuple  # (table, backbone, pretraining dataset, evaluation dataset, *variant)

_DATASETS = ("cifar10", "cifar100", "tiny-imagenet")
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    # Table 2: linear evaluation on the pretraining dataset.
    "Table 2": [(b, d, d) for b in ("conv4", "resnet32") for d in _DATASETS],
    # Table 5: grain, pretraining on CIFAR-100, evaluation on its 100 and 20 classes.
    "Table 5": [(b, "cifar100", e) for b in ("conv4", "resnet32") for e in ("cifar100", "cifar100-20")],
    # Table 9: domain transfer, 10 -> 100 and 100 -> 10 per backbone.
    "Table 9": [(b, *pair) for b in ("conv4", "resnet8", "resnet32", "resnet56")
                for pair in (("cifar10", "cifar100"), ("cifar100", "cifar10"))],
}
MAIN_TABLES = ("Table 2", "Table 5", "Table 9")


def cells(**rows: list[Cell]) -> dict[Key, Cell]:
    """A method's rows by table (`Table_2=[...]`, in the table's column order) as {key: cell}."""
    out: dict[Key, Cell] = {}
    for name, row in rows.items():
        table = name.replace("_", " ")
        columns = COLUMNS[table]
        if len(row) != len(columns):
            raise ValueError(f"{table} has {len(columns)} columns, got {len(row)}")
        out.update({(table, *column): cell for column, cell in zip(columns, row)})
    return out


def lookup(numbers: dict[Key, Cell], backbone: str, pretrain: str, evaluate: str,
           variant: tuple = (), tables: tuple[str, ...] = MAIN_TABLES) -> tuple[float, float, str] | None:
    """(mean, std, table) of the first of `tables` holding this setting, or None."""
    for table in tables:
        cell = numbers.get((table, backbone, pretrain, evaluate, *variant))
        if cell is not None:
            return (*cell, table)
    return None
