-- typst-book.lua: typography fixes for the Typst PDF that no prose should have to remember.
--
-- 1. An apostrophe after a digit ("chapter 2's", "GPT-3's"). Pandoc's Typst writer emits a
--    straight ', and Typst's smart quotes turn ' after a digit into a prime (2′s). The filter
--    emits the typographic apostrophe itself, which Typst leaves alone.
-- 2. TeX's negative thin space \! in math. Pandoc's Typst writer turns it into #h(-1em), a
--    whole em backwards, which draws "\sigma\!\left(" as a sigma over its bracket. Typst
--    spaces a function and its parenthesis well by itself, so \! is dropped.
-- 3. A part's introduction. orange-book prints it after the part page's table of contents,
--    squeezed at the foot of the page; the filter hands it to the part page (book-part in
--    typst-show.typ), which sets it under the part title.
--
-- 4. The "Appendices" divider orange-book's filter writes as an empty chapter: drawn as a
--    part page instead (book-appendices).
--
-- Runs after orange-book's filter (post-render), for Typst output only.

if not quarto.doc.is_format("typst") then
  return {}
end

local APOSTROPHE = "\u{2019}"

-- "2’s" -> Str "2", RawInline "’", Str "s"; nil when the text has no digit-apostrophe pair.
local function split_after_digits(text)
  local out = pandoc.List()
  local pos = 1
  while true do
    local s1, e1 = text:find("%d'", pos)
    local s2, e2 = text:find("%d" .. APOSTROPHE, pos)
    local s, e = s1, e1
    if s2 and (not s1 or s2 < s1) then
      s, e = s2, e2
    end
    if not s then
      break
    end
    out:insert(pandoc.Str(text:sub(pos, s)))
    out:insert(pandoc.RawInline("typst", APOSTROPHE))
    pos = e + 1
  end
  if #out == 0 then
    return nil
  end
  if pos <= #text then
    out:insert(pandoc.Str(text:sub(pos)))
  end
  return out
end

local function starts_chapter(block)
  if block.t == "Header" and block.level == 1 then
    return true
  end
  if block.t == "RawBlock" and block.format == "typst" then
    local text = block.text
    return text:match("^#part%[") ~= nil
      or text:match("^#heading%(level: 1") ~= nil
      or text:match("^#show: appendices") ~= nil
  end
  return false
end

-- #part[Title] followed by the part page's paragraphs -> #book-part[Title][paragraphs];
-- the heading after #show: appendices -> #book-appendices[Title]
local function part_pages(blocks)
  local out = pandoc.List()
  local i = 1
  while i <= #blocks do
    local block = blocks[i]
    local title = block.t == "RawBlock" and block.format == "typst"
      and block.text:match("^#part%[(.*)%]%s*$")
    local previous = blocks[i - 1]
    local divider = block.t == "RawBlock" and block.format == "typst"
      and previous and previous.t == "RawBlock" and previous.text:match("^#show: appendices")
      and block.text:match("^#heading%(level: 1, numbering: none%)%[(.*)%]%s*$")
    if divider then
      out:insert(pandoc.RawBlock("typst", "#book-appendices[" .. divider .. "]"))
      i = i + 1
    elseif title then
      out:insert(pandoc.RawBlock("typst", "#book-part[" .. title .. "]["))
      i = i + 1
      while i <= #blocks and not starts_chapter(blocks[i]) do
        out:insert(blocks[i])
        i = i + 1
      end
      out:insert(pandoc.RawBlock("typst", "]"))
    else
      out:insert(block)
      i = i + 1
    end
  end
  return out
end

return {
  {
    Str = function(el)
      return split_after_digits(el.text)
    end,
    Math = function(el)
      if el.text:find("\\!", 1, true) then
        el.text = el.text:gsub("\\!", "")
        return el
      end
    end,
  },
  {
    Blocks = part_pages,
  },
}
