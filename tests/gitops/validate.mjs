// Validates Kubernetes objects (a JSON list on stdin) with the Argo CD / Flux models' schemas.
// Prints one JSON line per object: {"kind", "name", "errors": [..]}; exits 0 (the test reads the verdicts).
import { readFileSync } from "node:fs";

const MODELS = {
  "argoproj.io/v1alpha1/Application": "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application",
  "source.toolkit.fluxcd.io/v1/GitRepository": "@kubernetes-models/flux-cd/source.toolkit.fluxcd.io/v1/GitRepository",
  "kustomize.toolkit.fluxcd.io/v1/Kustomization": "@kubernetes-models/flux-cd/kustomize.toolkit.fluxcd.io/v1/Kustomization",
};

const docs = JSON.parse(readFileSync(0, "utf8"));
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const name = doc.metadata?.name;
  if (!(key in MODELS)) {
    console.log(JSON.stringify({ kind: key, name, errors: [`no schema for ${key}`] }));
    continue;
  }
  const mod = await import(MODELS[key]);
  const model = new mod[doc.kind](doc);
  try {
    model.validate();
    console.log(JSON.stringify({ kind: key, name, errors: [] }));
  } catch (err) {
    console.log(JSON.stringify({ kind: key, name, errors: [String(err.message ?? err)] }));
  }
}
