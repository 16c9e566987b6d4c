/**
 * The layers of casparian-flow, bottom to top. A folder may import only from the
 * folders it lists (and from itself); `npm test` fails on any other arrow.
 *
 * Reading the table is reading the architecture: the kernel knows nothing, the
 * hooks and the wire sit on the kernel, sinks on the kernel only, and the
 * applications (worker, run, cli) sit on top of everything they wire together.
 */
const LAYERS = [
  { name: "kernel", path: "^core/kernel/", may: [] },
  { name: "protocol", path: "^core/protocol/", may: ["kernel"] },
  { name: "hooks", path: "^hooks/", may: ["kernel"] },
  { name: "sinks", path: "^sinks/", may: ["kernel"] },
  { name: "env", path: "^core/env/", may: ["kernel", "protocol"] },
  { name: "bridge", path: "^core/bridge/", may: ["kernel"] },
  { name: "config", path: "^core/config/", may: ["kernel", "hooks", "sinks"] },
  { name: "pipeline", path: "^core/pipeline/", may: ["kernel", "protocol", "hooks", "sinks", "bridge", "config"] },
  { name: "worker", path: "^core/worker/", may: ["kernel", "protocol", "hooks", "sinks", "env", "bridge", "config", "pipeline"] },
  { name: "run", path: "^core/run/", may: ["kernel", "protocol", "sinks", "config", "env", "worker"] },
  { name: "cli", path: "^core/cli/", may: ["kernel", "protocol", "hooks", "sinks", "env", "bridge", "config", "pipeline", "worker", "run"] },
];

const byName = Object.fromEntries(LAYERS.map((layer) => [layer.name, layer]));

const layerRules = LAYERS.map((layer) => {
  const allowed = [layer.path, ...layer.may.map((name) => byName[name].path)];
  return {
    name: `layer-${layer.name}`,
    comment: `${layer.name} may import only from: ${layer.may.join(", ") || "nothing of ours"}`,
    severity: "error",
    from: { path: layer.path },
    to: { path: "^(core|sinks|hooks)/", pathNot: allowed },
  };
});

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: "no-circular",
      comment: "A cycle makes two modules one; merge them or split out what both need.",
      severity: "error",
      from: { path: "^(core|sinks|hooks)/" },
      to: { circular: true },
    },
    {
      name: "entries-on-top",
      comment: "index.ts and internals.ts only re-export the layers; a module importing an entry would import everything.",
      severity: "error",
      from: { path: "^(core|sinks|hooks)/" },
      to: { path: "^(index|internals)\\.ts$" },
    },
    {
      name: "public-entry-stays-public",
      comment: "The public entry (semver) must not re-export the internals entry (no stability promise).",
      severity: "error",
      from: { path: "^index\\.ts$" },
      to: { path: "^internals\\.ts$" },
    },
    {
      name: "no-dev-deps-in-production-code",
      comment: "Production code must not import a devDependency: a production install does not have it.",
      severity: "error",
      from: { path: "^(core|sinks|hooks)/|^(index|internals)\\.ts$" },
      to: { dependencyTypes: ["npm-dev"] },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(dist|node_modules)/" },
    tsConfig: { fileName: "tsconfig.json" },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: { extensions: [".ts", ".js"] },
  },
};
