"""The three learners the engine can drive keep one typed contract (training/contract.py).

A method renamed or given another signature on one runtime only would pass every local test and
fail on a cluster; these tests fail instead.
"""

import copy
import inspect

import pytest
import torch

from helpers import inputs_of, random_states, space_of
from edropout_ray.config import Config

from edropout_ray.distributed.learner_actor import LearnerWorker, RemoteLearner
from edropout_ray.training.contract import LearnerContract
from edropout_ray.training.learner import Learner

CONTRACT_METHODS = [name for name, member in vars(LearnerContract).items()
                    if inspect.isfunction(member) and not name.startswith("_")]


def test_contract_lists_what_the_engine_calls():
    assert set(CONTRACT_METHODS) == {"step", "end_epoch", "restart_schedule", "learning_rate", "sync",
                                     "weights", "state_dict", "load_state_dict"}


@pytest.mark.parametrize("learner_class", [Learner, LearnerWorker, RemoteLearner])
@pytest.mark.parametrize("method", CONTRACT_METHODS)
def test_every_learner_has_the_contracts_signature(learner_class, method):
    expected = inspect.signature(getattr(LearnerContract, method))
    implemented = getattr(learner_class, method, None)
    assert callable(implemented), f"{learner_class.__name__} lacks {method}()"
    actual = inspect.signature(implemented)
    # once a class is made an actor in this process, Ray's tracing wraps its methods with one more
    # keyword-only parameter, which callers never pass
    parameters = [name for name in actual.parameters if name != "_ray_trace_ctx"]
    assert parameters == list(expected.parameters), (
        f"{learner_class.__name__}.{method}{actual} differs from the contract's {method}{expected}")
    assert actual.return_annotation == expected.return_annotation, (
        f"{learner_class.__name__}.{method} returns {actual.return_annotation}, "
        f"the contract says {expected.return_annotation}")


def test_a_local_learner_is_an_instance_of_the_contract():
    learner = Learner(space_of("small_cnn"), Config())
    assert isinstance(learner, LearnerContract)
    assert isinstance(learner.learning_rate(), float)


@pytest.mark.parametrize("train_at_size", [True, False])
def test_reading_the_state_does_not_change_the_run(train_at_size):
    """A checkpoint taken between steps (state_dict) leaves the trajectory exactly as it was."""
    config = Config(optimizer="sgd", lr=0.05, momentum=0.9, train_at_size=train_at_size)
    learners = [Learner(copy.deepcopy(space_of("small_cnn", torch.float64)), config) for _ in range(2)]
    state = random_states(learners[0].space, 1, seed=5)[0]
    x = inputs_of("small_cnn", batch=8, dtype=torch.float64)
    y = torch.arange(len(x)) % 10
    for step in range(3):
        torch.manual_seed(step)
        checked = learners[0].step(state, x, y)
        first = learners[0].state_dict()
        torch.manual_seed(step)
        plain = learners[1].step(state, x, y)
        assert checked.loss == plain.loss, f"step {step}"
        second = learners[0].state_dict()
        for name, tensor in first["model"].items():
            assert torch.equal(tensor, second["model"][name]), f"state_dict() changed {name}"
