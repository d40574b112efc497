"""The names users type, in one import-light module so `fewlabel --help` does not load torch.

Each registry defines its names from here; tests check they agree with what the registries hold.
"""

IMAGE_POLICIES = ("none", "standard", "autoaugment", "randaugment", "mixup", "cutmix")
TEXT_POLICIES = ("none", "deletion", "swap", "synonym", "eda")
IMAGE_METHODS = ("simclr", "moco", "byol", "dino")
TEXT_METHODS = ("mlm", "clm")
AUDIO_POLICIES = ("none", "standard", "specaugment", "mixup")
AUDIO_METHODS = ("wav2vec2",)
IMAGE_TEXT_METHODS = ("clip",)
STRATEGIES = ("feature-extract", "finetune", "partial")
APPROACHES = ("supervised", "transfer", "selfsupervised", "semisupervised")
BUDGET_NAMES = ("small", "medium", "large")
