"""Training data: images for the VQGAN, code datasets for the transformer.

  pipeline.py       create_train_iterator / create_eval_iterator / count_eval_examples
                    (VQGAN image batches through tf.data)
  config.py         default_data_config / validate_data_config (the `config.data` fields)
  sources.py        the resumable example order per process (EpochOrder, train_steps,
                    eval_steps); TFDS random-access and streamed sources of named fields
  arrays.py         ArraySource (numpy arrays / memmaps) and TF-free train_batches /
                    eval_batches over any random-access source
  codes.py          code datasets (TFDS array_record/tfrecord + vqgan_jax_codes.json):
                    open_code_dataset, read_meta, list_splits; chunked writing for
                    `python -m vqgan_jax.extract_codes`
  local_builder.py  image folders and lists as TFDS datasets (array_record)
  preprocess.py     taming's resize / crop / flip / [-1, 1] as TF ops

Nothing is imported here, so `import vqgan_jax.data` does not import TensorFlow;
`arrays` needs numpy only; `codes` imports TensorFlow/TFDS inside its functions.
"""
