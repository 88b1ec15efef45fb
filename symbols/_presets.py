"""Preset lookup shared by the network modules: presets are data, errors list the choices."""


class ChoiceError(ValueError):
    """An unknown network, depth or setting; the message lists the valid choices."""


def choose(network, presets, num_layers, setting=None):
    """Return ``(setting, presets[(num_layers, setting)])``; ``setting`` defaults to the first one
    listed for the depth. ``presets`` maps ``(num_layers, setting)`` to a preset."""
    depths = sorted({d for d, _ in presets})
    try:
        num_layers = int(num_layers)
    except (TypeError, ValueError):
        num_layers = None
    if num_layers not in depths:
        raise ChoiceError('%s: unknown num_layers %r; valid choices: %s'
                          % (network, num_layers, ', '.join(map(str, depths))))
    settings = [s for d, s in presets if d == num_layers]
    if setting is None:
        setting = settings[0]
    if (num_layers, setting) not in presets:
        raise ChoiceError('%s-%d: unknown setting %r; valid choices: %s'
                          % (network, num_layers, setting, ', '.join(map(str, settings))))
    return setting, presets[(num_layers, setting)]
