"""What the PneumoniaMNIST release is: its files' names and checksums (no torch, for `pneumolab-cache`)."""

# Official checksums per image size, from the medmnist package 3.0.2,
# medmnist/info.py, INFO["pneumoniamnist"]["MD5"], ["MD5_64"], ["MD5_128"], ["MD5_224"]
# (https://github.com/MedMNIST/MedMNIST/blob/main/medmnist/info.py).
MD5 = {
    28: "28209eda62fecd6e6a2d98b1501bb15f",
    64: "8f4eceb4ccffa70c672198ea285246c6",
    128: "05b46931834c231683c68f40c47b2971",
    224: "d6a3c71de1b945ea11211b03746c1fe1",
}


def size_suffix(size: int) -> str:
    """How the release names its files: pneumoniamnist.npz at 28 px, pneumoniamnist_<size>.npz otherwise."""
    return "" if size == 28 else f"_{size}"
