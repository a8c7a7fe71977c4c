// Types for `import 'anoscope/element'` (anomaly-detector.js): registers <anomaly-detector>.
import type { DetectResult, LearnedInfo } from './index.js';

export interface AnomalyScoreDetail {
  score: number;
  verdict: 'anomalous' | 'normal';
  threshold: number;
  map: Float32Array;
  width: number;
  height: number;
  name?: string;
}

export interface AnomalyReadyDetail {
  threads: number;
  notice: string;
  model: string;
  weightsUrl: string;
  /** The learned file loaded with the model (the element started in a learned mode), else null. */
  learned: LearnedInfo | null;
  /** The loaded file's storage (the `dtype` attribute picks it among a models.json entry's variants). */
  dtype: 'q8' | 'f16' | 'f32' | 'bf16' | null;
  /** Whether the image tower runs in int8 (a q8 model on the CPU). */
  int8: boolean;
  /** Where the image tower runs, e.g. 'CPU (WebAssembly SIMD + relaxed, int8, 2 threads)'. */
  backend: string;
}

export class AnomalyDetector extends HTMLElement {
  /** Folder of the package's files when they are not next to the module (also the `assets-base` attribute). */
  assetsBase: string | null;
  readonly score: number | null;
  readonly map: Float32Array | null;
  readonly mapWidth: number;
  readonly mapHeight: number;
  /** 'interaction' (default), 'visible' (default with `src`) or 'eager'. */
  readonly loading: 'interaction' | 'visible' | 'eager';
  /** Starts loading the worker, the wasm and the model now. */
  load(): Promise<void>;
  /** Scores one image; resolves to the `anomaly-score` detail. */
  detect(image: Blob): Promise<AnomalyScoreDetail>;
}

declare global {
  interface HTMLElementTagNameMap {
    'anomaly-detector': AnomalyDetector;
  }
  interface HTMLElementEventMap {
    'anomaly-score': CustomEvent<AnomalyScoreDetail>;
    'anomaly-error': CustomEvent<{ message: string }>;
    'anomaly-ready': CustomEvent<AnomalyReadyDetail>;
  }
}

export type { DetectResult };
