"""Training data: TFDS datasets and local image folders as VQGAN batches.

  pipeline.py       create_train_iterator / create_eval_iterator / count_eval_examples
  config.py         default_data_config / validate_data_config (the `config.data` fields)
  sources.py        example order per process, random-access and streamed TFDS sources
  local_builder.py  image folders and lists as TFDS datasets (array_record)
  preprocess.py     taming's resize / crop / flip / [-1, 1] as TF ops

Nothing is imported here, so `import vqgan_jax.data` does not import TensorFlow.
"""
