// A minimal VitePress docs site whose page embeds the detector from the npm package (installed
// from its tarball by vitepress.test.mjs). Built as any docs site is: `vitepress build`.
import { defineConfig } from 'vitepress';

export default defineConfig({
  title: 'Widget docs',
  description: 'A documentation site that embeds the anoscope anomaly detector',
  // No inline scripts, so the site runs under a strict CSP (script-src 'self'): no dark-mode
  // switch (its script is inline) and the site data in a chunk instead of an inline script.
  appearance: false,
  metaChunk: true,
  vue: {
    template: { compilerOptions: { isCustomElement: (tag) => tag === 'anomaly-detector' } },
  },
});
