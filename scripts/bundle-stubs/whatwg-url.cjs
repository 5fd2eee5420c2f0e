// Stands in for whatwg-url in the production bundle (scripts/build.mjs). node-fetch 2, which the Tencent Cloud SDK
// sends with, takes `URL` from Node's own `url` module and reads whatwg-url's only where Node has none (before
// Node 10). Node's is always there, so the bundle hands over Node's and a start does not load whatwg-url and the
// Unicode tables of tr46 (about 300 KB; docs/decisions/deploy.md).
"use strict";
exports.URL = require("node:url").URL;
