"""Native tests of filter.py: ``python3 -m unittest`` (no component, no broker).
weir_filter.testing runs the filter as the broker would; import it before the filter."""

import unittest

from weir_filter import ParamError
from weir_filter.testing import logged, run

import filter as f


class PropertyEqualsTest(unittest.TestCase):
    def test_keeps_the_messages_with_the_value(self):
        verdicts = run(
            f.Filter,
            {"property": "region", "value": "eu"},
            [
                {"properties": {"region": "eu"}},
                {"properties": {"region": "us"}},
                {"tags": "TagA"},
                {"properties": [("tier", "gold"), ("region", "eu")]},
            ],
        )
        self.assertEqual(verdicts, [True, False, False, True])
        self.assertEqual(logged, [("info", 'keeping messages whose property "region" is "eu"')])

    def test_refuses_missing_and_unknown_parameters(self):
        with self.assertRaisesRegex(ParamError, 'missing parameter "value"'):
            run(f.Filter, {"property": "region"}, [])
        with self.assertRaisesRegex(ParamError, 'unknown parameter "valeu"'):
            run(f.Filter, {"property": "region", "value": "eu", "valeu": "x"}, [])


if __name__ == "__main__":
    unittest.main()
