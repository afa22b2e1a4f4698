"""The reference's recipe: EnhancedCNN48 on FER2013, Adam with L2, 25 epochs, early stopping.

    python -m fer_jax.main --config configs/enhanced.py --workdir runs/enhanced

Data: config.data.csv_path, else $FER2013_PATH, else the TFDS manual dir. On a 2-core CPU an epoch
takes ~3.5 min. Its backbone rate (1e-5) suits pretrained backbones: from random weights the model
stays at the majority class (24.9 % PublicTest after 2 epochs; docs/training.md), so add
--config.backbone_lr=1e-3, or use configs/quick.py.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                      # 0 to 2**32 - 1

  config.model = ml_collections.ConfigDict()
  config.model.name = 'cnn48'
  config.model.num_classes = 7
  config.model.dropout_rate = 0.5
  config.model.dtype = 'float32'       # compute dtype: float32, bfloat16 or float16
  # Transfer models (configs/transfer_vgg16.py): an ImageNet weight file and how to read it.
  config.model.pretrained_weights = ''  # '' = random initialisation
  config.model.first_conv = 'sum'       # RGB kernels -> one channel: 'sum' or 'luminance'
  config.model.stride_in_1x1 = False    # True for Keras ResNet-50 weights (v1 strides)

  config.data = ml_collections.ConfigDict()
  config.data.source = 'fer2013'      # or 'images' (a folder tree), 'arrays' (no TFDS), 'generated'
  config.data.images_path = ''        # source='images': <images_path>/<split>/<class>/*.png|jpg
  config.data.csv_path = ''           # '' -> $FER2013_PATH -> <tfds_dir>/downloads/manual/
  config.data.tfds_dir = ''           # '' -> $TFDS_DATA_DIR -> ~/tensorflow_datasets
  config.data.arrays_path = ''        # source='arrays': fer2013_arrays.npz[.xz] ('' -> $FER2013_ARRAYS)
  config.data.train_split = 'train'   # Training rows (an image folder: its train/ folder)
  config.data.eval_split = 'validation'  # PublicTest rows
  config.data.max_train_examples = 0  # 0 = all
  config.data.max_eval_examples = 0
  config.data.generated_train_size = 2048
  config.data.generated_eval_size = 512

  # The reference's 11 steps with the magnitudes of its PyTorch pipeline (docs/training.md).
  config.augment = ml_collections.ConfigDict()
  config.augment.steps = 'flip,rotate,affine,perspective,contrast,brightness,sharpness,clahe,noise'
  config.augment.flip_prob = 0.5
  config.augment.rotate_degrees = 20.0
  config.augment.rotate_prob = 1.0
  config.augment.fill = 128          # grey outside the warped face, as the reference
  config.augment.affine_translate = 0.1  # fraction of the side
  config.augment.affine_scale = 0.1      # scale in 1 +- this
  config.augment.affine_shear = 10.0     # degrees, x-shear
  config.augment.affine_prob = 1.0
  config.augment.perspective_distortion = 0.1
  config.augment.perspective_prob = 0.5
  config.augment.contrast = 0.3
  config.augment.contrast_prob = 1.0
  config.augment.brightness = 0.3
  config.augment.brightness_prob = 1.0
  config.augment.sharpness_factor = 2.0
  config.augment.sharpness_prob = 0.5
  config.augment.clahe_clip = 2.0    # OpenCV units: x the mean bin count of a tile
  config.augment.clahe_tiles = 4     # 4x4 tiles of 12x12 pixels
  config.augment.clahe_prob = 0.5
  config.augment.noise_std = 0.05    # on the [-1, 1] scale
  config.augment.noise_prob = 0.5
  config.augment.strength_start = 1.0  # progressive strength: start -> end over ramp_epochs
  config.augment.strength_end = 1.0
  config.augment.ramp_epochs = 0

  config.init_from = ''                 # 'pretrained' (the shipped weights) or a workdir: fine-tune
  config.batch_size = 32
  config.steps_per_call = 1          # train steps per compiled call (lax.scan); more on accelerators
  config.eval_batch_size = 256
  config.num_epochs = 25
  config.backbone_lr = 1e-5
  config.freeze_backbone_epochs = 0    # backbone learning rate 0 for this many epochs (transfer)
  config.head_lr = 1e-3
  config.optimizer = 'adam'            # or 'sgd' (momentum, nesterov below)
  config.momentum = 0.9
  config.nesterov = True
  config.lr_schedule = 'step'          # the reference's StepLR; 'cosine' (warm-up, then to zero); 'plateau'
  config.lr_decay_every_epochs = 8
  config.lr_decay_factor = 0.5
  config.warmup_epochs = 0.0           # cosine and plateau
  # lr_schedule='plateau': x plateau_factor after plateau_patience epochs without a better
  # validation accuracy, never below plateau_min_scale of the base rates.
  config.plateau_factor = 0.5
  config.plateau_patience = 5
  config.plateau_min_scale = 0.01
  config.weight_decay = 1e-4
  config.label_smoothing = 0.0
  # Batch regularisers (fer_jax/regularize.py), all off as in the reference.
  config.mixup_alpha = 0.0             # Beta(alpha, alpha) mixing weight; 0 = off
  config.cutmix_alpha = 0.0
  config.cutmix_prob = 0.5             # share of cutmix batches when both are on
  config.random_erasing = 0.0          # probability per face
  config.class_weighting = 0.0         # 0 = none, 1 = inverse class frequency, 0.5 = its sqrt
  config.ema_decay = 0.0               # >0: evaluate / checkpoint-serve a moving average of the weights
  # BatchNorm statistics for evaluation re-measured after each epoch on this many clean training
  # faces (dropout off, no augmentation); 0 keeps the training-time running averages as the reference.
  # Why: fer_jax/batchnorm.py (27.6 % -> 43.6 % PublicTest, same weights).
  config.bn_recalibration_faces = 2048
  # The latest checkpoint every N epochs (and at the last); the best one whenever it improves.
  # Resuming replays the epochs since the last save exactly (fer_jax.train's randomness).
  config.checkpoint_every_epochs = 1
  config.early_stopping_patience = 7  # epochs without a better selection score; 0 = never stop
  # The best checkpoint (and early stopping) by this metric of the validation split under this TTA.
  config.select_metric = 'accuracy'    # or 'macro_f1'
  config.select_tta = 'none'           # or 'flip', 'ten_crop' (scored every epoch, so slower)
  config.evals = ''                    # more datasets scored every epoch: 'name=path,name=path'

  config.log_every_steps = 50
  config.progress_bar = True
  config.fast_cpu = True  # see fer_jax.cli.configure_cpu_backend; FER_JAX_FAST_CPU=0 also disables
  return config
