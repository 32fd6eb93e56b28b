// Draws the reference from the edge's own OpenAPI document. No third-party
// origin is contacted: the validator badge is off and every file is local.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    filter: true,
    // Tokens stay in this tab only.
    persistAuthorization: false,
  });
});
