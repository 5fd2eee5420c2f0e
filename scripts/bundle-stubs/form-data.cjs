// Stands in for form-data in the production bundle (scripts/build.mjs). The Tencent Cloud SDK builds a multipart
// body only for the upload actions of some products; keygate calls AssociateInstancesKeyPairs and
// DescribeInstances, never with `multipart`. A start so does not load form-data, mime-types and mime-db (about
// 200 KB; docs/decisions/deploy.md). Should a multipart request ever be built, it fails here, loudly.
"use strict";
class FormData {
  constructor() {
    throw new Error("keygate's bundle carries no form-data: multipart requests are not supported");
  }
}
module.exports = FormData;
