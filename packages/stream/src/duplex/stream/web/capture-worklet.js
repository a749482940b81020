// Copies the microphone's samples (mono, at the AudioContext's rate) to the page.
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) this.port.postMessage(input[0].slice(0));
    return true;
  }
}
registerProcessor("duplex-capture", CaptureProcessor);
