// {{name}}: a weir message filter (written by `weir filter new`).
//
// Keeps the messages whose property `property` has the value `value`, e.g.
// `--param property=region --param value=eu`. Change `init` and `keep` to filter on
// anything else: tags, keys, other properties, or the body (set `needsBody`).

import { exportFilter, log } from './weir-filter.js';

class PropertyEquals {
  static needsBody = false; // true only if `keep` reads bodies (each costs a copy)

  static init(params) {
    // A typo in a parameter name is an error at upload, not a silent default.
    params.allowOnly(['property', 'value']);
    const property = params.require('property');
    const value = params.require('value');
    log('info', `keeping messages whose property ${JSON.stringify(property)} is ${JSON.stringify(value)}`);
    return new PropertyEquals(property, value);
  }

  constructor(property, value) {
    this.property = property;
    this.value = value;
  }

  keep(msg) {
    return msg.property(this.property) === this.value;
  }
}

export const filter = exportFilter(PropertyEquals);
