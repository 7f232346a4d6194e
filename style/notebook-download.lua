-- notebook-download.lua: under the title of every chapter made from a notebook, a line of
-- links to download that notebook and the book's PDF.
--
-- Quarto's own notebook links (notebook-links, notebook-view) are not made for book
-- chapters, and its code-tools "source" view cannot show an .ipynb. project.resources in
-- _quarto.yml copies each notebook next to its page; data-noresolveinput stops Quarto from
-- turning the link to an input file into a link to its page. The PDF sits at the site's
-- root, named by book.output-file.

if not quarto.doc.is_format("html") then
  return {}
end

local function icon(name)
  return pandoc.RawInline("html", '<i class="bi bi-' .. name .. '" aria-hidden="true"></i> ')
end

local function download_line(notebook, pdf)
  local links = pandoc.List({
    pandoc.Link({ icon("journal-code"), pandoc.Str("Download"), pandoc.Space(), pandoc.Str("this"),
      pandoc.Space(), pandoc.Str("chapter"), pandoc.Space(), pandoc.Str("as"), pandoc.Space(),
      pandoc.Str("a"), pandoc.Space(), pandoc.Str("notebook"), pandoc.Space(),
      pandoc.Code(notebook) }, notebook, "", { download = notebook, ["data-noresolveinput"] = "" }),
  })
  if pdf then
    links:insert(pandoc.Str(" · "))
    links:insert(pandoc.Link({ icon("file-pdf"), pandoc.Str("the"), pandoc.Space(),
      pandoc.Str("whole"), pandoc.Space(), pandoc.Str("book"), pandoc.Space(), pandoc.Str("as"),
      pandoc.Space(), pandoc.Str("a"), pandoc.Space(), pandoc.Str("PDF") }, pdf))
  end
  return pandoc.Div({ pandoc.Plain(links) }, { class = "chapter-downloads" })
end

function Pandoc(doc)
  local input = quarto.doc.input_file or ""
  if not input:match("%.ipynb$") then
    return nil
  end
  local notebook = pandoc.path.filename(input)
  local pdf = nil
  local book = doc.meta.book
  if book and book["output-file"] then
    local offset = quarto.project.offset or "."
    pdf = offset .. "/" .. pandoc.utils.stringify(book["output-file"]) .. ".pdf"
  end
  local line = download_line(notebook, pdf)
  for i, block in ipairs(doc.blocks) do
    if block.t == "Header" and block.level == 1 then
      doc.blocks:insert(i + 1, line)
      return doc
    end
  end
  doc.blocks:insert(1, line)
  return doc
end
