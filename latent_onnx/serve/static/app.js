// The page of `latent-onnx serve`: every text from the server or the user goes in as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
let bundles = [];
let controller = null;

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function chip(text, onClick) {
  const button = element("button", text, { type: "button" });
  button.addEventListener("click", onClick);
  return button;
}

async function chooseBundle() {
  const bundle = bundles.find((b) => b.name === $("bundle").value);
  $("bundle-description").textContent = bundle.description;
  $("mode-class").disabled = bundle.classes === 0;
  $("mode-caption").disabled = !bundle.captions;
  $(bundle.classes === 0 ? "mode-caption" : "mode-class").checked = true;
  showMode();
  const [classes, vocabulary] = await Promise.all([
    getJson(`/v1/bundles/${encodeURIComponent(bundle.name)}/classes`),
    getJson(`/v1/bundles/${encodeURIComponent(bundle.name)}/vocabulary`),
  ]);
  $("class-list").replaceChildren(...classes.classes.flatMap((c) => c.names.map((name) => element("option", undefined, { value: name }))));
  $("class-chips").replaceChildren(...classes.classes.map((c) => chip(c.names[0], () => { $("classes").value = c.names[0]; })));
  $("word-chips").replaceChildren(...vocabulary.words.map((word) => chip(word, () => {
    $("caption").value = ($("caption").value.trim() + " " + word).trim();
  })));
}

function showMode() {
  const caption = $("mode-caption").checked;
  $("class-row").hidden = caption;
  $("caption-row").hidden = !caption;
  // the bundle's sampler defaults for this kind of condition (captions may take more steps than classes)
  const bundle = bundles.find((b) => b.name === $("bundle").value);
  const sampler = bundle.sampler_by_condition[caption ? "caption" : "class"];
  $("steps").value = sampler.steps;
  $("method").value = sampler.method;
}

function request() {
  const body = { bundle: $("bundle").value, n: Number($("count").value), steps: Number($("steps").value), method: $("method").value };
  if ($("mode-caption").checked) body.caption = $("caption").value;
  else body.classes = $("classes").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

function fileName(result, image) {
  return `${result.bundle}-s${image.seed}-${String(image.index).padStart(4, "0")}.png`;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "copied";
  } catch {
    window.prompt("Copy the command:", text);
  }
}

function showResult(result) {
  const figures = result.images.map((image) => {
    const url = `data:image/png;base64,${image.png}`;
    const figure = element("figure");
    figure.append(element("img", undefined, { src: url, alt: `sample ${image.index}`, title: image.command }));
    const caption = element("figcaption");
    caption.append(element("span", `#${image.index} logp ${image.logp.toFixed(2)}`));
    caption.append(element("a", "PNG", { href: url, download: fileName(result, image), class: "download" }));
    const copyButton = chip("copy command", () => copy(image.command, copyButton));
    copyButton.classList.add("copy");
    copyButton.dataset.command = image.command;
    caption.append(copyButton);
    figure.append(caption);
    return figure;
  });
  $("results").replaceChildren(...figures);
  const s = result.sampler;
  setStatus(`${result.images.length} image(s), seed ${result.seed}, ${s.steps} ${s.method} steps`);
}

function handleEvent(name, data) {
  if (name === "progress") {
    $("progress").max = data.total;
    $("progress").value = data.step;
    $("preview").src = `data:image/png;base64,${data.preview}`;
    $("preview").hidden = false;
    setStatus(`step ${data.step} of ${data.total}`);
  } else if (name === "result") {
    showResult(data);
  } else if (name === "error") {
    setStatus(data.error, true);
  }
}

async function generate(event) {
  event.preventDefault();
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("progress").value = 0;
  setStatus("starting ...");
  try {
    const response = await fetch("/v1/generate/stream", {
      method: "POST", body: JSON.stringify(request()), signal: controller.signal,
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `${response.status} ${response.statusText}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const name = block.match(/^event: (.*)$/m);
        const data = block.match(/^data: (.*)$/m);
        if (name && data) handleEvent(name[1], JSON.parse(data[1]));
      }
    }
  } catch (error) {
    setStatus(error.name === "AbortError" ? "stopped" : error.message, error.name !== "AbortError");
  } finally {
    controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function start() {
  $("form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("mode-class").addEventListener("change", showMode);
  $("mode-caption").addEventListener("change", showMode);
  $("bundle").addEventListener("change", () => chooseBundle().catch((error) => setStatus(error.message, true)));
  try {
    const listing = await getJson("/v1/bundles");
    bundles = listing.bundles;
    const methods = listing.sampler_settings.find((setting) => setting.name === "method");
    $("method").replaceChildren(...methods.choices.map((choice) => element("option", choice, { value: choice })));
    $("count").max = listing.limits.n;
    $("bundle").replaceChildren(...bundles.map((b) => element("option", b.name, { value: b.name })));
    await chooseBundle();
    document.body.dataset.ready = "true";
  } catch (error) {
    setStatus(error.message, true);
  }
}

start();
