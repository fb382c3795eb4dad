"""{{name}}: a weir message filter (written by ``weir filter new``).

Keeps the messages whose property ``property`` has the value ``value``, e.g.
``--param property=region --param value=eu``. Change ``init`` and ``keep`` to filter on
anything else: tags, keys, other properties, or the body (set ``needs_body``).
"""

from weir_filter import export_filter, log


class PropertyEquals:
    needs_body = False  # True only if ``keep`` reads bodies (each costs a copy)

    @classmethod
    def init(cls, params):
        # A typo in a parameter name is an error at upload, not a silent default.
        params.allow_only(["property", "value"])
        prop = params.require("property")
        value = params.require("value")
        log("info", f'keeping messages whose property "{prop}" is "{value}"')
        return cls(prop, value)

    def __init__(self, prop, value):
        self.prop = prop
        self.value = value

    def keep(self, msg):
        return msg.property(self.prop) == self.value


# componentize-py exports the class named Filter.
Filter = export_filter(PropertyEquals)
