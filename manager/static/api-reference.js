// The API reference (/api/v1/docs): the vendored Swagger UI renders the OpenAPI document named
// by #swagger-ui's data-spec-url. No online validator, nothing fetched from another origin.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
