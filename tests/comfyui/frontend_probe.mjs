// Drives ComfyUI's real frontend in headless Chromium and reports what it shows, as JSON on stdout.
// Used by test_frontend_comfyui.py (which makes the assertions); test-only, never part of the pack.
//
// usage: node frontend_probe.mjs <server url> <chromium> <profile dir> <screenshot dir> <portrait video>
//        <portrait image> <name>...
// For each workflow name (a template of the pack, fetched from /api/workflow_templates/emosh/<name>.json) and each
// stage ("loaded", "portrait" after the portrait clip is chosen in every Load Video, "after run" after every Save
// Video and Preview Image has been shown a portrait clip / image as the frontend shows a finished run's output), it reports the frontend's own node
// geometry and widget values, any dialog or error overlay on screen, and saves a screenshot of the whole graph.
import { chromium } from 'playwright-core'

const [url, executable, profile, shots, portrait, portraitImage, ...names] = process.argv.slice(2)
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']
const VIEWPORT = { width: 1920, height: 1080 }
const SETTLE_MS = 1500

const context = await chromium.launchPersistentContext(profile, {
  executablePath: executable, headless: true, args: CHROMIUM_ARGS, viewport: VIEWPORT
})
const page = context.pages()[0] ?? await context.newPage()
const pageErrors = [] // uncaught errors in the page, each with the workflow and stage it happened in
let current = 'start-up'
page.on('pageerror', (error) => pageErrors.push(`${current}: ${error}`))
await page.goto(url)
await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.EmoshTracker,
  null, { timeout: 120000 })
await page.waitForTimeout(SETTLE_MS)
await page.keyboard.press('Escape') // a first-run template browser, if the frontend opens one
await page.evaluate(async () => { // the minimap would cover a corner of every screenshot (newer frontends only)
  await window.app.extensionManager?.setting?.set?.('Comfy.Minimap.Visible', false)
})

// Everything the test checks, read from the frontend (geometry after it has sized and drawn the nodes).
async function snapshot (stage, name) {
  current = `${name} ${stage}`
  await page.evaluate(async () => {
    for (let i = 0; i < 10; i++) {
      window.app.canvas.setDirty(true, true)
      await new Promise((resolve) => requestAnimationFrame(resolve))
    }
  })
  const state = await page.evaluate(() => {
    const { app, LiteGraph } = window
    const visible = (el) => el.offsetParent !== null && el.getClientRects().length > 0
    const overlays = [...document.querySelectorAll('[role="dialog"], .p-dialog, .p-toast-message')]
      .filter(visible).map((el) => el.innerText.trim().slice(0, 300))
    const nodes = app.graph._nodes.map((node) => {
      const box = node.getBounding ? [...node.getBounding()] : [node.pos[0], node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT,
        node.size[0], node.size[1] + LiteGraph.NODE_TITLE_HEIGHT]
      return {
        id: node.id,
        type: node.type,
        title: node.title,
        registered: node.type in LiteGraph.registered_node_types,
        has_errors: Boolean(node.has_errors),
        collapsed: Boolean(node.flags?.collapsed),
        box,
        widgets: (node.widgets ?? []).filter((w) => w.name && !['upload', 'image_upload', 'video_upload']
          .includes(w.type)).map((w) => ({
          name: w.name,
          type: w.type,
          value: typeof w.value === 'object' ? null : w.value,
          min: w.options?.min,
          max: w.options?.max,
          values: Array.isArray(w.options?.values) ? w.options.values : null
        }))
      }
    })
    return { overlays, nodes }
  })
  await fitAndShoot(`${shots}/${name}--${stage.replace(' ', '_')}.png`)
  return { stage, ...state }
}

// Zoom the canvas so the whole graph fits the viewport, then screenshot it.
async function fitAndShoot (path) {
  await page.evaluate(async () => {
    const { app } = window
    const boxes = app.graph._nodes.map((n) => n.getBounding())
    const x0 = Math.min(...boxes.map((b) => b[0])); const y0 = Math.min(...boxes.map((b) => b[1]))
    const x1 = Math.max(...boxes.map((b) => b[0] + b[2])); const y1 = Math.max(...boxes.map((b) => b[1] + b[3]))
    const canvas = app.canvas.canvas
    const [left, top] = [80, 90] // the side bar and the tab/run bars lie over the canvas
    const scale = Math.min((canvas.clientWidth - left - 20) / (x1 - x0), (canvas.clientHeight - top - 20) / (y1 - y0))
    app.canvas.ds.scale = scale
    app.canvas.ds.offset = [left / scale - x0, top / scale - y0]
    app.canvas.setDirty(true, true)
    for (let i = 0; i < 5; i++) await new Promise((resolve) => requestAnimationFrame(resolve))
  })
  await page.waitForTimeout(300)
  await page.screenshot({ path })
}

const results = []
for (const name of names) {
  const workflow = await page.evaluate(async (n) => {
    const response = await fetch(`/api/workflow_templates/emosh/${encodeURIComponent(n)}.json`)
    return response.ok ? await response.json() : null
  }, name)
  if (workflow === null) {
    results.push({ name, error: 'template not served' })
    continue
  }
  current = `${name} loading`
  await page.evaluate(async ([w, n]) => { await window.app.loadGraphData(w, true, true, n) }, [workflow, name])
  await page.waitForTimeout(SETTLE_MS)
  const stages = [await snapshot('loaded', name)]

  const videos = await page.evaluate((file) => {
    const loaders = window.app.graph._nodes.filter((n) => n.type === 'LoadVideo')
    for (const node of loaders) {
      const widget = node.widgets.find((w) => w.name === 'file')
      widget.value = file
      widget.callback?.(file)
    }
    return loaders.length
  }, portrait)
  await page.waitForTimeout(3 * SETTLE_MS) // the preview element loads the clip and the node grows to it
  stages.push({ ...await snapshot('portrait', name), videos })

  current = `${name} after run`
  await page.evaluate(([video, image]) => {
    const shown = { SaveVideo: { images: [{ filename: video, subfolder: '', type: 'input' }], animated: [true] },
      PreviewImage: { images: [{ filename: image, subfolder: '', type: 'input' }] } }
    for (const node of window.app.graph._nodes.filter((n) => n.type in shown)) {
      window.app.api.dispatchCustomEvent('executed', {
        node: String(node.id), display_node: String(node.id), prompt_id: 'emosh-frontend-test', output: shown[node.type]
      })
    }
  }, [portrait, portraitImage])
  await page.waitForTimeout(3 * SETTLE_MS)
  stages.push(await snapshot('after run', name))

  const prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output)
  results.push({ name, stages, prompt })
}
console.log(JSON.stringify({ results, pageErrors }))
await context.close()
