"""The search over states: a population of bit strings, its operators, and the energies that rank them.

Nothing here knows a network: a state is a bool vector, an energy a function of logits."""
