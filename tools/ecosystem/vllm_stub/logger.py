"""vllm.logger.init_logger: a plain logging.Logger."""
import logging


def init_logger(name):
    return logging.getLogger(name)
