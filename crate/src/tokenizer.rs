//! CLIP byte-level BPE tokenizer (the `bpe_simple_vocab_16e6` vocabulary of OpenAI CLIP /
//! open_clip), built with the `tokenizers` crate and usable natively and in wasm32.
//!
//! The vocabulary is embedded with `include_bytes!`, so no file access is needed.
//! The `tokenizers::Tokenizer` is assembled the way transformers'
//! `convert_slow_tokenizer.CLIPConverter` builds CLIP's `tokenizer.json` (BPE with the
//! `</w>` end-of-word suffix; normalizer NFC → `\s+`→`" "` → lowercase; pre-tokenizer CLIP
//! regex split + ByteLevel; Roberta-style post-processor adding SOT/EOT).
//!
//! Before that pipeline [`ClipTokenizer`] cleans the text the way `open_clip.tokenize` does
//! (`ftfy.fix_text`, `html.unescape` twice, whitespace collapse, `str.lower`), see
//! [`clean_text`], and recognises open_clip's literal special tokens `<start_of_text>` /
//! `<end_of_text>`. The result equals `open_clip.tokenize` except for text that needs
//! ftfy's mojibake repair (`"cafÃ©"`) or an HTML5-only named entity (`&checkmark;`); the HTML 4
//! entities, numeric character references and the other ftfy fixes are implemented.
//! With [`Padding::Hf`] the ids equal those of transformers' `CLIPTokenizer` for openai
//! checkpoints (EOT padding) wherever that tokenizer's normalisation agrees with open_clip's.

use std::borrow::Cow;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, ensure, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::utils::SysRegex;
use tokenizers::{NormalizedString, SplitDelimiterBehavior, Tokenizer};

/// Number of token positions of every CLIP text encoder.
pub const CONTEXT_LENGTH: usize = 77;
/// Id of the start-of-text token `<|startoftext|>`.
pub const SOT: u32 = 49406;
/// Id of the end-of-text token `<|endoftext|>`.
pub const EOT: u32 = 49407;
/// Number of tokens: 256 byte symbols, 256 with `</w>`, 48 894 merges, SOT and EOT.
pub const VOCAB_SIZE: usize = 49408;
/// Number of merges read from the vocabulary file (as CLIP / open_clip do).
pub const NUM_MERGES: usize = 49152 - 256 - 2;
/// Text of the start-of-text token (HF spelling).
pub const SOT_TOKEN: &str = "<|startoftext|>";
/// Text of the end-of-text token (HF spelling).
pub const EOT_TOKEN: &str = "<|endoftext|>";
/// Suffix the BPE model appends to the last symbol of every word.
pub const END_OF_WORD_SUFFIX: &str = "</w>";
/// CLIP's pre-tokenisation regex (without the special tokens).
pub const PRETOKENIZE_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// `bpe_simple_vocab_16e6.txt.gz` (MIT, see weights/LICENSE-bpe-vocab.txt).
static BPE_VOCAB_GZ: &[u8] = include_bytes!("../../weights/bpe_simple_vocab_16e6.txt.gz");

/// open_clip's own spelling of the special tokens, which `open_clip.tokenize` recognises
/// in the input text.
const OPEN_CLIP_SPECIALS: [(&str, u32); 2] = [("<start_of_text>", SOT), ("<end_of_text>", EOT)];

/// How [`ClipTokenizer::encode_padded`] fills the positions after EOT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// pad with EOT (49407) as HF CLIPTokenizer for openai checkpoints
    Hf,
    /// pad with 0 as open_clip.tokenize
    OpenClip,
}

impl Padding {
    /// The id written into the padding positions.
    pub const fn pad_id(self) -> u32 {
        match self {
            Padding::Hf => EOT,
            Padding::OpenClip => 0,
        }
    }
}

/// CLIP tokenizer. Cheap to clone (the vocabulary is shared).
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Arc<Tokenizer>,
    /// open_clip's full regex, special tokens first; used only to find them.
    open_clip_pattern: Arc<SysRegex>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tk<T>(r: tokenizers::Result<T>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{what}: {e}"))
}

impl ClipTokenizer {
    /// Builds the tokenizer from the embedded vocabulary (about 60 ms; only the merges part of
    /// the file is decompressed). [`ClipTokenizer::shared`] builds it once per process, and
    /// clones share it.
    pub fn new() -> Result<Self> {
        let text = embedded_merge_lines()?;
        let mut lines = text.split('\n');
        lines.next(); // "#version: 0.2" style header

        let symbols = byte_symbols();
        let mut vocab = Vocab::with_capacity(VOCAB_SIZE);
        for c in &symbols {
            let id = vocab.len() as u32;
            vocab.insert(c.to_string(), id);
        }
        for c in &symbols {
            let id = vocab.len() as u32;
            vocab.insert(format!("{c}{END_OF_WORD_SUFFIX}"), id);
        }
        let mut merges = Vec::with_capacity(NUM_MERGES);
        for i in 0..NUM_MERGES {
            let line = lines
                .next()
                .ok_or_else(|| anyhow!("BPE vocabulary has only {i} merges"))?;
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| anyhow!("bad merge line {}: {line:?}", i + 1))?;
            let id = vocab.len() as u32;
            vocab.insert(format!("{a}{b}"), id);
            merges.push((a.to_owned(), b.to_owned()));
        }
        vocab.insert(SOT_TOKEN.to_owned(), SOT);
        vocab.insert(EOT_TOKEN.to_owned(), EOT);
        ensure!(
            vocab.len() == VOCAB_SIZE,
            "CLIP vocabulary has {} distinct tokens, expected {VOCAB_SIZE}",
            vocab.len()
        );

        let bpe = tk(
            BPE::builder()
                .vocab_and_merges(vocab, merges)
                .end_of_word_suffix(END_OF_WORD_SUFFIX.to_owned())
                .unk_token(EOT_TOKEN.to_owned())
                .build(),
            "building the CLIP BPE model",
        )?;
        let mut tokenizer = Tokenizer::new(bpe);
        let normalizer = NormalizerSequence::new(vec![
            NFC.into(),
            tk(
                Replace::new(ReplacePattern::Regex(r"\s+".to_owned()), " "),
                "whitespace normalizer",
            )?
            .into(),
            Lowercase.into(),
        ]);
        tk(tokenizer.with_normalizer(Some(normalizer)), "normalizer")?;
        let split = tk(
            Split::new(
                SplitPattern::Regex(PRETOKENIZE_PATTERN.to_owned()),
                SplitDelimiterBehavior::Removed,
                true,
            ),
            "pre-tokenizer regex",
        )?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((EOT_TOKEN.to_owned(), EOT), (SOT_TOKEN.to_owned(), SOT))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let open_clip_pattern = tk(
            SysRegex::new(&format!(
                "{}|{}|{PRETOKENIZE_PATTERN}",
                OPEN_CLIP_SPECIALS[0].0, OPEN_CLIP_SPECIALS[1].0
            )),
            "open_clip regex",
        )?;
        Ok(Self {
            tokenizer: Arc::new(tokenizer),
            open_clip_pattern: Arc::new(open_clip_pattern),
        })
    }

    /// A process-wide tokenizer, built on first use.
    pub fn shared() -> Result<&'static ClipTokenizer> {
        static SHARED: OnceLock<ClipTokenizer> = OnceLock::new();
        if let Some(t) = SHARED.get() {
            return Ok(t);
        }
        let t = ClipTokenizer::new()?;
        Ok(SHARED.get_or_init(|| t))
    }

    /// The underlying `tokenizers` pipeline, equivalent to transformers' `CLIPTokenizerFast`
    /// (no ftfy / html cleaning, `<|startoftext|>` / `<|endoftext|>` in the text are not
    /// special). `encode(text, true)` adds SOT/EOT and does not truncate.
    pub fn hf_tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Number of tokens (49408).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The token string of an id (byte-level symbols, `</w>` marks a word end).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// `[SOT] + bpe ids + [EOT]`, not truncated, text cleaned as `open_clip.tokenize` does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let cleaned = clean_text(text);
        let mut ids = Vec::with_capacity(cleaned.len() / 3 + 2);
        ids.push(SOT);
        let mut rest = cleaned.as_str();
        while let Some((before, special, after)) = self.split_open_clip_special(rest) {
            self.push_bpe_ids(before, &mut ids)?;
            ids.push(special);
            rest = after;
        }
        self.push_bpe_ids(rest, &mut ids)?;
        ids.push(EOT);
        Ok(ids)
    }

    /// Finds the first `<start_of_text>` / `<end_of_text>` that open_clip's regex matches as a
    /// token (e.g. not one swallowed by a preceding punctuation run as in `"!<end_of_text>"`).
    fn split_open_clip_special<'t>(&self, text: &'t str) -> Option<(&'t str, u32, &'t str)> {
        if !OPEN_CLIP_SPECIALS.iter().any(|(lit, _)| text.contains(lit)) {
            return None;
        }
        self.open_clip_pattern.find_iter(text).find_map(|(start, end)| {
            let id = OPEN_CLIP_SPECIALS.iter().find(|(lit, _)| *lit == &text[start..end])?.1;
            Some((&text[..start], id, &text[end..]))
        })
    }

    fn push_bpe_ids(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let encoding = tk(self.tokenizer.encode_fast(text, false), "tokenizing")?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    /// Exactly [`CONTEXT_LENGTH`] ids: `encode(text)` truncated to 77 with EOT kept as the last
    /// token (`ids[..77]`, `ids[76] = EOT`), then padded per `padding`.
    pub fn encode_padded(&self, text: &str, padding: Padding) -> Result<Vec<u32>> {
        Ok(pad_to_context(self.encode(text)?, padding))
    }

    /// [`ClipTokenizer::encode_padded`] for each text.
    pub fn encode_batch(&self, texts: &[&str], padding: Padding) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode_padded(t, padding)).collect()
    }

    /// Text of the ids between a leading SOT and the first EOT (padding of either kind is
    /// ignored); words are separated by single spaces as in `open_clip.decode`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let body: Vec<u32> = ids
            .iter()
            .copied()
            .skip_while(|&id| id == SOT)
            .take_while(|&id| id != EOT)
            .filter(|&id| id != SOT)
            .collect();
        let text = tk(self.tokenizer.decode(&body, false), "decoding")?;
        Ok(text.replace(END_OF_WORD_SUFFIX, " ").trim_end().to_owned())
    }
}

/// The header line and the first [`NUM_MERGES`] merge lines of the embedded vocabulary. Only
/// these are decompressed (about 0.5 MB of the 3.2 MB file).
fn embedded_merge_lines() -> Result<String> {
    let mut gz = flate2::read::GzDecoder::new(BPE_VOCAB_GZ);
    let mut buf = Vec::with_capacity(600 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let mut newlines = 0;
    let end = loop {
        let n = gz
            .read(&mut chunk)
            .context("decompressing the embedded CLIP BPE vocabulary")?;
        ensure!(n > 0, "the embedded CLIP BPE vocabulary is truncated");
        for (i, &b) in chunk[..n].iter().enumerate() {
            if b == b'\n' {
                newlines += 1;
                if newlines == NUM_MERGES + 1 {
                    buf.extend_from_slice(&chunk[..i]);
                    break;
                }
            }
        }
        if newlines == NUM_MERGES + 1 {
            break buf;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    String::from_utf8(end).context("the embedded CLIP BPE vocabulary is not UTF-8")
}

/// Truncates to [`CONTEXT_LENGTH`] keeping EOT last, then pads with `padding.pad_id()`.
pub fn pad_to_context(mut ids: Vec<u32>, padding: Padding) -> Vec<u32> {
    if ids.len() > CONTEXT_LENGTH {
        ids.truncate(CONTEXT_LENGTH);
        ids[CONTEXT_LENGTH - 1] = EOT;
    }
    ids.resize(CONTEXT_LENGTH, padding.pad_id());
    ids
}

/// The 256 byte-level symbols in vocabulary order (GPT-2 / CLIP `bytes_to_unicode`): the
/// printable Latin-1 bytes as themselves, then the other bytes as U+0100, U+0101, ...
fn byte_symbols() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out: Vec<char> = (0..=255u8).filter(|&b| printable(b)).map(char::from).collect();
    out.extend(
        (0..=255u8)
            .filter(|&b| !printable(b))
            .zip(256u32..)
            .map(|(_, c)| char::from_u32(c).expect("valid char")),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Text cleaning, as open_clip's `_clean_lower`:
//   whitespace_clean(basic_clean(text)).lower()
//   basic_clean = ftfy.fix_text, html.unescape twice, strip
// ---------------------------------------------------------------------------------------------

/// Cleans text as `open_clip.tokenize` does before BPE: ftfy's fixes (all but the mojibake
/// repair `fix_encoding`; HTML 4 named entities only), `html.unescape` twice, whitespace
/// collapsed to single spaces and stripped, lower-cased as Python's `str.lower`.
pub fn clean_text(text: &str) -> String {
    let fixed = ftfy_fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let mut out = String::with_capacity(unescaped.len());
    for word in unescaped.split(is_python_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.to_lowercase()
}

/// Python's `str.isspace`.
fn is_python_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\x1c'..='\x1f'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `ftfy.fix_text` with its default configuration, without `fix_encoding` (mojibake repair).
fn ftfy_fix_text(text: &str) -> String {
    let plain = text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'&' || b == b'\n' || b == b'\t');
    if plain {
        return text.to_owned();
    }
    // ftfy fixes each line separately. HTML entities are unescaped only up to the first line
    // that contains '<' (ftfy switches `unescape_html` off for the rest of the text there).
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        unescape &= !segment.contains('<');
        out.push_str(&ftfy_fix_segment(segment, unescape));
    }
    out
}

fn ftfy_fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    // ftfy repeats its fixes until the text no longer changes.
    for _ in 0..16 {
        let mut t = if unescape {
            ftfy_unescape_html(&text)
        } else {
            text.clone()
        };
        t = map_chars(&t, fix_c1_control);
        t = map_chars(&t, fix_latin_ligature);
        t = map_chars(&t, fix_character_width);
        t = map_chars(&t, uncurl_quote);
        t = fix_line_breaks(&t);
        t = remove_terminal_escapes(&t);
        t.retain(|c| !is_ftfy_control_char(c));
        t = nfc(&t);
        if t == text {
            break;
        }
        text = t;
    }
    text
}

fn map_chars(text: &str, f: impl Fn(char) -> Option<Cow<'static, str>>) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match f(c) {
            Some(s) => out.push_str(&s),
            None => out.push(c),
        }
    }
    out
}

fn nfc(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut n = NormalizedString::from(text);
    n.nfc();
    n.get().to_owned()
}

/// Windows-1252 decoding of the bytes 0x80..=0x9F ("sloppy": undefined bytes map to
/// themselves), used by ftfy's `fix_c1_controls` and by `html.unescape` for `&#128;` etc.
const CP1252_C1: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{2c6}', '\u{2030}',
    '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}',
    '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}',
    '\u{17e}', '\u{178}',
];

fn fix_c1_control(c: char) -> Option<Cow<'static, str>> {
    match c {
        '\u{80}'..='\u{9f}' => {
            let d = CP1252_C1[c as usize - 0x80];
            (d != c).then(|| Cow::Owned(d.to_string()))
        }
        _ => None,
    }
}

fn fix_latin_ligature(c: char) -> Option<Cow<'static, str>> {
    let s = match c {
        '\u{132}' => "IJ",
        '\u{133}' => "ij",
        '\u{149}' => "\u{2bc}n",
        '\u{1f1}' => "DZ",
        '\u{1f2}' => "Dz",
        '\u{1f3}' => "dz",
        '\u{1c4}' => "D\u{17d}",
        '\u{1c5}' => "D\u{17e}",
        '\u{1c6}' => "d\u{17e}",
        '\u{1c7}' => "LJ",
        '\u{1c8}' => "Lj",
        '\u{1c9}' => "lj",
        '\u{1ca}' => "NJ",
        '\u{1cb}' => "Nj",
        '\u{1cc}' => "nj",
        '\u{fb00}' => "ff",
        '\u{fb01}' => "fi",
        '\u{fb02}' => "fl",
        '\u{fb03}' => "ffi",
        '\u{fb04}' => "ffl",
        '\u{fb05}' => "\u{17f}t",
        '\u{fb06}' => "st",
        _ => return None,
    };
    Some(Cow::Borrowed(s))
}

/// ftfy's `fix_character_width`: NFKC of the halfwidth and fullwidth forms U+FF01..U+FFEF,
/// and U+3000 IDEOGRAPHIC SPACE to a space.
fn fix_character_width(c: char) -> Option<Cow<'static, str>> {
    match c {
        '\u{3000}' => Some(Cow::Borrowed(" ")),
        '\u{ff01}'..='\u{ffef}' => {
            let mut n = NormalizedString::from(c.to_string());
            n.nfkc();
            let s = n.get();
            (s.chars().ne(std::iter::once(c))).then(|| Cow::Owned(s.to_owned()))
        }
        _ => None,
    }
}

fn uncurl_quote(c: char) -> Option<Cow<'static, str>> {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => Some(Cow::Borrowed("'")),
        '\u{201c}'..='\u{201f}' => Some(Cow::Borrowed("\"")),
        _ => None,
    }
}

fn fix_line_breaks(text: &str) -> String {
    if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return text.to_owned();
    }
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// Removes ANSI escapes `ESC [ (digit|;)* letter`.
fn remove_terminal_escapes(text: &str) -> String {
    if !text.contains('\x1b') {
        return text.to_owned();
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut last, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == 0x1b && b.get(i + 1) == Some(&b'[') {
            let mut j = i + 2;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b';') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_alphabetic() {
                out.push_str(&text[last..i]);
                last = j + 1;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

/// ftfy's `remove_control_chars` set.
fn is_ftfy_control_char(c: char) -> bool {
    matches!(
        c,
        '\0'..='\x08'
            | '\x0b'
            | '\x0e'..='\x1f'
            | '\x7f'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}'
    )
}

/// ftfy's `unescape_html`: entities matching `&#?[0-9A-Za-z]{1,24};` that are known named
/// entities (also their upper-cased forms) or valid numeric references.
fn ftfy_unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut last, mut i) = (0, 0);
    while let Some(off) = text[i..].find('&') {
        let start = i + off;
        let mut j = start + 1;
        if b.get(j) == Some(&b'#') {
            j += 1;
        }
        let name_start = j;
        while j < b.len() && b[j].is_ascii_alphanumeric() {
            j += 1;
        }
        if (1..=24).contains(&(j - name_start)) && b.get(j) == Some(&b';') {
            let entity = &text[start..=j];
            let replacement = if let Some(v) =
                lookup_entity(HTML_ENTITIES, &entity[1..]).or_else(|| lookup_entity(FTFY_UPPER_ENTITIES, &entity[1..]))
            {
                Some(v.to_owned())
            } else if entity.starts_with("&#") {
                let u = html_unescape(entity);
                (!u.contains(';')).then_some(u)
            } else {
                None
            };
            if let Some(r) = replacement {
                out.push_str(&text[last..start]);
                out.push_str(&r);
                last = j + 1;
            }
            i = j + 1;
        } else {
            i = start + 1;
        }
    }
    out.push_str(&text[last..]);
    out
}

fn lookup_entity(table: &'static [(&'static str, &'static str)], name: &str) -> Option<&'static str> {
    table.binary_search_by(|(k, _)| k.cmp(&name)).ok().map(|i| table[i].1)
}

/// Python's `html.unescape` (named references limited to the HTML 4 set plus `&apos;`).
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let (mut last, mut i) = (0, 0);
    while let Some(off) = text[i..].find('&') {
        let start = i + off;
        let rest = &text[start + 1..];
        match match_charref(rest) {
            Some((len, replacement)) => {
                out.push_str(&text[last..start]);
                out.push_str(&replacement);
                last = start + 1 + len;
                i = last;
            }
            None => i = start + 1,
        }
    }
    out.push_str(&text[last..]);
    out
}

/// Matches `#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?` at the start of `rest`
/// and returns the matched length and its replacement.
fn match_charref(rest: &str) -> Option<(usize, String)> {
    let b = rest.as_bytes();
    let semi = |end: usize| end + usize::from(b.get(end) == Some(&b';'));
    if b.first() == Some(&b'#') {
        let (digits_start, radix) = match b.get(1) {
            Some(b'x' | b'X') => (2, 16),
            _ => (1, 10),
        };
        let mut end = digits_start;
        while end < b.len() && (b[end] as char).is_digit(radix) {
            end += 1;
        }
        if end == digits_start {
            return None;
        }
        let num = u32::from_str_radix(&rest[digits_start..end], radix).unwrap_or(u32::MAX);
        return Some((semi(end), numeric_charref(num)));
    }
    let end = rest
        .char_indices()
        .take_while(|&(_, c)| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .last()
        .map(|(i, c)| i + c.len_utf8())?;
    let end = semi(end);
    let name = &rest[..end];
    if let Some(v) = lookup_entity(HTML_ENTITIES, name) {
        return Some((end, v.to_owned()));
    }
    // the longest prefix (of at least 2 chars) that is an entity name
    let bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &x in bounds.iter().rev() {
        if let Some(v) = lookup_entity(HTML_ENTITIES, &name[..x]) {
            return Some((end, format!("{v}{}", &name[x..])));
        }
    }
    Some((end, format!("&{name}")))
}

fn numeric_charref(num: u32) -> String {
    match num {
        0 => "\u{fffd}".to_owned(),
        0x0d => "\r".to_owned(),
        0x80..=0x9f => CP1252_C1[num as usize - 0x80].to_string(),
        0xd800..=0xdfff | 0x11_0000.. => "\u{fffd}".to_owned(),
        0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        _ if num & 0xfffe == 0xfffe => String::new(),
        _ => char::from_u32(num).map(String::from).unwrap_or_default(),
    }
}

// Generated with Python's html.entities.html5, restricted to the HTML 4 names plus apos and the
// upper-case legacy names; sorted by key. FTFY_UPPER_ENTITIES are the upper-cased forms ftfy
// also decodes (ftfy.chardata._build_html_entities).
#[rustfmt::skip]
const HTML_ENTITIES: &[(&str, &str)] = &[
    ("AElig", "\u{c6}"), ("AElig;", "\u{c6}"), ("AMP", "\u{26}"), ("AMP;", "\u{26}"),
    ("Aacute", "\u{c1}"), ("Aacute;", "\u{c1}"), ("Acirc", "\u{c2}"), ("Acirc;", "\u{c2}"),
    ("Agrave", "\u{c0}"), ("Agrave;", "\u{c0}"), ("Alpha;", "\u{391}"), ("Aring", "\u{c5}"),
    ("Aring;", "\u{c5}"), ("Atilde", "\u{c3}"), ("Atilde;", "\u{c3}"), ("Auml", "\u{c4}"),
    ("Auml;", "\u{c4}"), ("Beta;", "\u{392}"), ("COPY", "\u{a9}"), ("COPY;", "\u{a9}"),
    ("Ccedil", "\u{c7}"), ("Ccedil;", "\u{c7}"), ("Chi;", "\u{3a7}"), ("Dagger;", "\u{2021}"),
    ("Delta;", "\u{394}"), ("ETH", "\u{d0}"), ("ETH;", "\u{d0}"), ("Eacute", "\u{c9}"),
    ("Eacute;", "\u{c9}"), ("Ecirc", "\u{ca}"), ("Ecirc;", "\u{ca}"), ("Egrave", "\u{c8}"),
    ("Egrave;", "\u{c8}"), ("Epsilon;", "\u{395}"), ("Eta;", "\u{397}"), ("Euml", "\u{cb}"),
    ("Euml;", "\u{cb}"), ("GT", "\u{3e}"), ("GT;", "\u{3e}"), ("Gamma;", "\u{393}"),
    ("Iacute", "\u{cd}"), ("Iacute;", "\u{cd}"), ("Icirc", "\u{ce}"), ("Icirc;", "\u{ce}"),
    ("Igrave", "\u{cc}"), ("Igrave;", "\u{cc}"), ("Iota;", "\u{399}"), ("Iuml", "\u{cf}"),
    ("Iuml;", "\u{cf}"), ("Kappa;", "\u{39a}"), ("LT", "\u{3c}"), ("LT;", "\u{3c}"),
    ("Lambda;", "\u{39b}"), ("Mu;", "\u{39c}"), ("Ntilde", "\u{d1}"), ("Ntilde;", "\u{d1}"),
    ("Nu;", "\u{39d}"), ("OElig;", "\u{152}"), ("Oacute", "\u{d3}"), ("Oacute;", "\u{d3}"),
    ("Ocirc", "\u{d4}"), ("Ocirc;", "\u{d4}"), ("Ograve", "\u{d2}"), ("Ograve;", "\u{d2}"),
    ("Omega;", "\u{3a9}"), ("Omicron;", "\u{39f}"), ("Oslash", "\u{d8}"), ("Oslash;", "\u{d8}"),
    ("Otilde", "\u{d5}"), ("Otilde;", "\u{d5}"), ("Ouml", "\u{d6}"), ("Ouml;", "\u{d6}"),
    ("Phi;", "\u{3a6}"), ("Pi;", "\u{3a0}"), ("Prime;", "\u{2033}"), ("Psi;", "\u{3a8}"),
    ("QUOT", "\u{22}"), ("QUOT;", "\u{22}"), ("REG", "\u{ae}"), ("REG;", "\u{ae}"),
    ("Rho;", "\u{3a1}"), ("Scaron;", "\u{160}"), ("Sigma;", "\u{3a3}"), ("THORN", "\u{de}"),
    ("THORN;", "\u{de}"), ("Tau;", "\u{3a4}"), ("Theta;", "\u{398}"), ("Uacute", "\u{da}"),
    ("Uacute;", "\u{da}"), ("Ucirc", "\u{db}"), ("Ucirc;", "\u{db}"), ("Ugrave", "\u{d9}"),
    ("Ugrave;", "\u{d9}"), ("Upsilon;", "\u{3a5}"), ("Uuml", "\u{dc}"), ("Uuml;", "\u{dc}"),
    ("Xi;", "\u{39e}"), ("Yacute", "\u{dd}"), ("Yacute;", "\u{dd}"), ("Yuml;", "\u{178}"),
    ("Zeta;", "\u{396}"), ("aacute", "\u{e1}"), ("aacute;", "\u{e1}"), ("acirc", "\u{e2}"),
    ("acirc;", "\u{e2}"), ("acute", "\u{b4}"), ("acute;", "\u{b4}"), ("aelig", "\u{e6}"),
    ("aelig;", "\u{e6}"), ("agrave", "\u{e0}"), ("agrave;", "\u{e0}"), ("alefsym;", "\u{2135}"),
    ("alpha;", "\u{3b1}"), ("amp", "\u{26}"), ("amp;", "\u{26}"), ("and;", "\u{2227}"),
    ("ang;", "\u{2220}"), ("apos;", "\u{27}"), ("aring", "\u{e5}"), ("aring;", "\u{e5}"),
    ("asymp;", "\u{2248}"), ("atilde", "\u{e3}"), ("atilde;", "\u{e3}"), ("auml", "\u{e4}"),
    ("auml;", "\u{e4}"), ("bdquo;", "\u{201e}"), ("beta;", "\u{3b2}"), ("brvbar", "\u{a6}"),
    ("brvbar;", "\u{a6}"), ("bull;", "\u{2022}"), ("cap;", "\u{2229}"), ("ccedil", "\u{e7}"),
    ("ccedil;", "\u{e7}"), ("cedil", "\u{b8}"), ("cedil;", "\u{b8}"), ("cent", "\u{a2}"),
    ("cent;", "\u{a2}"), ("chi;", "\u{3c7}"), ("circ;", "\u{2c6}"), ("clubs;", "\u{2663}"),
    ("cong;", "\u{2245}"), ("copy", "\u{a9}"), ("copy;", "\u{a9}"), ("crarr;", "\u{21b5}"),
    ("cup;", "\u{222a}"), ("curren", "\u{a4}"), ("curren;", "\u{a4}"), ("dArr;", "\u{21d3}"),
    ("dagger;", "\u{2020}"), ("darr;", "\u{2193}"), ("deg", "\u{b0}"), ("deg;", "\u{b0}"),
    ("delta;", "\u{3b4}"), ("diams;", "\u{2666}"), ("divide", "\u{f7}"), ("divide;", "\u{f7}"),
    ("eacute", "\u{e9}"), ("eacute;", "\u{e9}"), ("ecirc", "\u{ea}"), ("ecirc;", "\u{ea}"),
    ("egrave", "\u{e8}"), ("egrave;", "\u{e8}"), ("empty;", "\u{2205}"), ("emsp;", "\u{2003}"),
    ("ensp;", "\u{2002}"), ("epsilon;", "\u{3b5}"), ("equiv;", "\u{2261}"), ("eta;", "\u{3b7}"),
    ("eth", "\u{f0}"), ("eth;", "\u{f0}"), ("euml", "\u{eb}"), ("euml;", "\u{eb}"),
    ("euro;", "\u{20ac}"), ("exist;", "\u{2203}"), ("fnof;", "\u{192}"), ("forall;", "\u{2200}"),
    ("frac12", "\u{bd}"), ("frac12;", "\u{bd}"), ("frac14", "\u{bc}"), ("frac14;", "\u{bc}"),
    ("frac34", "\u{be}"), ("frac34;", "\u{be}"), ("frasl;", "\u{2044}"), ("gamma;", "\u{3b3}"),
    ("ge;", "\u{2265}"), ("gt", "\u{3e}"), ("gt;", "\u{3e}"), ("hArr;", "\u{21d4}"),
    ("harr;", "\u{2194}"), ("hearts;", "\u{2665}"), ("hellip;", "\u{2026}"), ("iacute", "\u{ed}"),
    ("iacute;", "\u{ed}"), ("icirc", "\u{ee}"), ("icirc;", "\u{ee}"), ("iexcl", "\u{a1}"),
    ("iexcl;", "\u{a1}"), ("igrave", "\u{ec}"), ("igrave;", "\u{ec}"), ("image;", "\u{2111}"),
    ("infin;", "\u{221e}"), ("int;", "\u{222b}"), ("iota;", "\u{3b9}"), ("iquest", "\u{bf}"),
    ("iquest;", "\u{bf}"), ("isin;", "\u{2208}"), ("iuml", "\u{ef}"), ("iuml;", "\u{ef}"),
    ("kappa;", "\u{3ba}"), ("lArr;", "\u{21d0}"), ("lambda;", "\u{3bb}"), ("lang;", "\u{27e8}"),
    ("laquo", "\u{ab}"), ("laquo;", "\u{ab}"), ("larr;", "\u{2190}"), ("lceil;", "\u{2308}"),
    ("ldquo;", "\u{201c}"), ("le;", "\u{2264}"), ("lfloor;", "\u{230a}"), ("lowast;", "\u{2217}"),
    ("loz;", "\u{25ca}"), ("lrm;", "\u{200e}"), ("lsaquo;", "\u{2039}"), ("lsquo;", "\u{2018}"),
    ("lt", "\u{3c}"), ("lt;", "\u{3c}"), ("macr", "\u{af}"), ("macr;", "\u{af}"),
    ("mdash;", "\u{2014}"), ("micro", "\u{b5}"), ("micro;", "\u{b5}"), ("middot", "\u{b7}"),
    ("middot;", "\u{b7}"), ("minus;", "\u{2212}"), ("mu;", "\u{3bc}"), ("nabla;", "\u{2207}"),
    ("nbsp", "\u{a0}"), ("nbsp;", "\u{a0}"), ("ndash;", "\u{2013}"), ("ne;", "\u{2260}"),
    ("ni;", "\u{220b}"), ("not", "\u{ac}"), ("not;", "\u{ac}"), ("notin;", "\u{2209}"),
    ("nsub;", "\u{2284}"), ("ntilde", "\u{f1}"), ("ntilde;", "\u{f1}"), ("nu;", "\u{3bd}"),
    ("oacute", "\u{f3}"), ("oacute;", "\u{f3}"), ("ocirc", "\u{f4}"), ("ocirc;", "\u{f4}"),
    ("oelig;", "\u{153}"), ("ograve", "\u{f2}"), ("ograve;", "\u{f2}"), ("oline;", "\u{203e}"),
    ("omega;", "\u{3c9}"), ("omicron;", "\u{3bf}"), ("oplus;", "\u{2295}"), ("or;", "\u{2228}"),
    ("ordf", "\u{aa}"), ("ordf;", "\u{aa}"), ("ordm", "\u{ba}"), ("ordm;", "\u{ba}"),
    ("oslash", "\u{f8}"), ("oslash;", "\u{f8}"), ("otilde", "\u{f5}"), ("otilde;", "\u{f5}"),
    ("otimes;", "\u{2297}"), ("ouml", "\u{f6}"), ("ouml;", "\u{f6}"), ("para", "\u{b6}"),
    ("para;", "\u{b6}"), ("part;", "\u{2202}"), ("permil;", "\u{2030}"), ("perp;", "\u{22a5}"),
    ("phi;", "\u{3c6}"), ("pi;", "\u{3c0}"), ("piv;", "\u{3d6}"), ("plusmn", "\u{b1}"),
    ("plusmn;", "\u{b1}"), ("pound", "\u{a3}"), ("pound;", "\u{a3}"), ("prime;", "\u{2032}"),
    ("prod;", "\u{220f}"), ("prop;", "\u{221d}"), ("psi;", "\u{3c8}"), ("quot", "\u{22}"),
    ("quot;", "\u{22}"), ("rArr;", "\u{21d2}"), ("radic;", "\u{221a}"), ("rang;", "\u{27e9}"),
    ("raquo", "\u{bb}"), ("raquo;", "\u{bb}"), ("rarr;", "\u{2192}"), ("rceil;", "\u{2309}"),
    ("rdquo;", "\u{201d}"), ("real;", "\u{211c}"), ("reg", "\u{ae}"), ("reg;", "\u{ae}"),
    ("rfloor;", "\u{230b}"), ("rho;", "\u{3c1}"), ("rlm;", "\u{200f}"), ("rsaquo;", "\u{203a}"),
    ("rsquo;", "\u{2019}"), ("sbquo;", "\u{201a}"), ("scaron;", "\u{161}"), ("sdot;", "\u{22c5}"),
    ("sect", "\u{a7}"), ("sect;", "\u{a7}"), ("shy", "\u{ad}"), ("shy;", "\u{ad}"),
    ("sigma;", "\u{3c3}"), ("sigmaf;", "\u{3c2}"), ("sim;", "\u{223c}"), ("spades;", "\u{2660}"),
    ("sub;", "\u{2282}"), ("sube;", "\u{2286}"), ("sum;", "\u{2211}"), ("sup1", "\u{b9}"),
    ("sup1;", "\u{b9}"), ("sup2", "\u{b2}"), ("sup2;", "\u{b2}"), ("sup3", "\u{b3}"),
    ("sup3;", "\u{b3}"), ("sup;", "\u{2283}"), ("supe;", "\u{2287}"), ("szlig", "\u{df}"),
    ("szlig;", "\u{df}"), ("tau;", "\u{3c4}"), ("there4;", "\u{2234}"), ("theta;", "\u{3b8}"),
    ("thetasym;", "\u{3d1}"), ("thinsp;", "\u{2009}"), ("thorn", "\u{fe}"), ("thorn;", "\u{fe}"),
    ("tilde;", "\u{2dc}"), ("times", "\u{d7}"), ("times;", "\u{d7}"), ("trade;", "\u{2122}"),
    ("uArr;", "\u{21d1}"), ("uacute", "\u{fa}"), ("uacute;", "\u{fa}"), ("uarr;", "\u{2191}"),
    ("ucirc", "\u{fb}"), ("ucirc;", "\u{fb}"), ("ugrave", "\u{f9}"), ("ugrave;", "\u{f9}"),
    ("uml", "\u{a8}"), ("uml;", "\u{a8}"), ("upsih;", "\u{3d2}"), ("upsilon;", "\u{3c5}"),
    ("uuml", "\u{fc}"), ("uuml;", "\u{fc}"), ("weierp;", "\u{2118}"), ("xi;", "\u{3be}"),
    ("yacute", "\u{fd}"), ("yacute;", "\u{fd}"), ("yen", "\u{a5}"), ("yen;", "\u{a5}"),
    ("yuml", "\u{ff}"), ("yuml;", "\u{ff}"), ("zeta;", "\u{3b6}"), ("zwj;", "\u{200d}"),
    ("zwnj;", "\u{200c}"),
];
#[rustfmt::skip]
const FTFY_UPPER_ENTITIES: &[(&str, &str)] = &[
    ("AACUTE;", "\u{c1}"), ("ACIRC;", "\u{c2}"), ("ACUTE;", "\u{b4}"), ("AELIG;", "\u{c6}"),
    ("AGRAVE;", "\u{c0}"), ("ALEFSYM;", "\u{2135}"), ("ALPHA;", "\u{391}"), ("AND;", "\u{2227}"),
    ("ANG;", "\u{2220}"), ("APOS;", "\u{27}"), ("ARING;", "\u{c5}"), ("ASYMP;", "\u{2248}"),
    ("ATILDE;", "\u{c3}"), ("AUML;", "\u{c4}"), ("BDQUO;", "\u{201e}"), ("BETA;", "\u{392}"),
    ("BRVBAR;", "\u{a6}"), ("BULL;", "\u{2022}"), ("CAP;", "\u{2229}"), ("CCEDIL;", "\u{c7}"),
    ("CEDIL;", "\u{b8}"), ("CENT;", "\u{a2}"), ("CHI;", "\u{3a7}"), ("CIRC;", "\u{2c6}"),
    ("CLUBS;", "\u{2663}"), ("CONG;", "\u{2245}"), ("CRARR;", "\u{21b5}"), ("CUP;", "\u{222a}"),
    ("CURREN;", "\u{a4}"), ("DAGGER;", "\u{2020}"), ("DARR;", "\u{2193}"), ("DEG;", "\u{b0}"),
    ("DELTA;", "\u{394}"), ("DIAMS;", "\u{2666}"), ("DIVIDE;", "\u{f7}"), ("EACUTE;", "\u{c9}"),
    ("ECIRC;", "\u{ca}"), ("EGRAVE;", "\u{c8}"), ("EMPTY;", "\u{2205}"), ("EMSP;", "\u{2003}"),
    ("ENSP;", "\u{2002}"), ("EPSILON;", "\u{395}"), ("EQUIV;", "\u{2261}"), ("ETA;", "\u{397}"),
    ("EUML;", "\u{cb}"), ("EURO;", "\u{20ac}"), ("EXIST;", "\u{2203}"), ("FNOF;", "\u{191}"),
    ("FORALL;", "\u{2200}"), ("FRAC12;", "\u{bd}"), ("FRAC14;", "\u{bc}"), ("FRAC34;", "\u{be}"),
    ("FRASL;", "\u{2044}"), ("GAMMA;", "\u{393}"), ("GE;", "\u{2265}"), ("HARR;", "\u{2194}"),
    ("HEARTS;", "\u{2665}"), ("HELLIP;", "\u{2026}"), ("IACUTE;", "\u{cd}"), ("ICIRC;", "\u{ce}"),
    ("IEXCL;", "\u{a1}"), ("IGRAVE;", "\u{cc}"), ("IMAGE;", "\u{2111}"), ("INFIN;", "\u{221e}"),
    ("INT;", "\u{222b}"), ("IOTA;", "\u{399}"), ("IQUEST;", "\u{bf}"), ("ISIN;", "\u{2208}"),
    ("IUML;", "\u{cf}"), ("KAPPA;", "\u{39a}"), ("LAMBDA;", "\u{39b}"), ("LANG;", "\u{27e8}"),
    ("LAQUO;", "\u{ab}"), ("LARR;", "\u{2190}"), ("LCEIL;", "\u{2308}"), ("LDQUO;", "\u{201c}"),
    ("LE;", "\u{2264}"), ("LFLOOR;", "\u{230a}"), ("LOWAST;", "\u{2217}"), ("LOZ;", "\u{25ca}"),
    ("LRM;", "\u{200e}"), ("LSAQUO;", "\u{2039}"), ("LSQUO;", "\u{2018}"), ("MACR;", "\u{af}"),
    ("MDASH;", "\u{2014}"), ("MICRO;", "\u{39c}"), ("MIDDOT;", "\u{b7}"), ("MINUS;", "\u{2212}"),
    ("MU;", "\u{39c}"), ("NABLA;", "\u{2207}"), ("NBSP;", "\u{a0}"), ("NDASH;", "\u{2013}"),
    ("NE;", "\u{2260}"), ("NI;", "\u{220b}"), ("NOT;", "\u{ac}"), ("NOTIN;", "\u{2209}"),
    ("NSUB;", "\u{2284}"), ("NTILDE;", "\u{d1}"), ("NU;", "\u{39d}"), ("OACUTE;", "\u{d3}"),
    ("OCIRC;", "\u{d4}"), ("OELIG;", "\u{152}"), ("OGRAVE;", "\u{d2}"), ("OLINE;", "\u{203e}"),
    ("OMEGA;", "\u{3a9}"), ("OMICRON;", "\u{39f}"), ("OPLUS;", "\u{2295}"), ("OR;", "\u{2228}"),
    ("ORDF;", "\u{aa}"), ("ORDM;", "\u{ba}"), ("OSLASH;", "\u{d8}"), ("OTILDE;", "\u{d5}"),
    ("OTIMES;", "\u{2297}"), ("OUML;", "\u{d6}"), ("PARA;", "\u{b6}"), ("PART;", "\u{2202}"),
    ("PERMIL;", "\u{2030}"), ("PERP;", "\u{22a5}"), ("PHI;", "\u{3a6}"), ("PI;", "\u{3a0}"),
    ("PIV;", "\u{3a0}"), ("PLUSMN;", "\u{b1}"), ("POUND;", "\u{a3}"), ("PRIME;", "\u{2032}"),
    ("PROD;", "\u{220f}"), ("PROP;", "\u{221d}"), ("PSI;", "\u{3a8}"), ("RADIC;", "\u{221a}"),
    ("RANG;", "\u{27e9}"), ("RAQUO;", "\u{bb}"), ("RARR;", "\u{2192}"), ("RCEIL;", "\u{2309}"),
    ("RDQUO;", "\u{201d}"), ("REAL;", "\u{211c}"), ("RFLOOR;", "\u{230b}"), ("RHO;", "\u{3a1}"),
    ("RLM;", "\u{200f}"), ("RSAQUO;", "\u{203a}"), ("RSQUO;", "\u{2019}"), ("SBQUO;", "\u{201a}"),
    ("SCARON;", "\u{160}"), ("SDOT;", "\u{22c5}"), ("SECT;", "\u{a7}"), ("SHY;", "\u{ad}"),
    ("SIGMA;", "\u{3a3}"), ("SIGMAF;", "\u{3a3}"), ("SIM;", "\u{223c}"), ("SPADES;", "\u{2660}"),
    ("SUB;", "\u{2282}"), ("SUBE;", "\u{2286}"), ("SUM;", "\u{2211}"), ("SUP1;", "\u{b9}"),
    ("SUP2;", "\u{b2}"), ("SUP3;", "\u{b3}"), ("SUP;", "\u{2283}"), ("SUPE;", "\u{2287}"),
    ("SZLIG;", "\u{53}\u{53}"), ("TAU;", "\u{3a4}"), ("THERE4;", "\u{2234}"),
    ("THETA;", "\u{398}"), ("THETASYM;", "\u{398}"), ("THINSP;", "\u{2009}"),
    ("TILDE;", "\u{2dc}"), ("TIMES;", "\u{d7}"), ("UACUTE;", "\u{da}"), ("UARR;", "\u{2191}"),
    ("UCIRC;", "\u{db}"), ("UGRAVE;", "\u{d9}"), ("UML;", "\u{a8}"), ("UPSIH;", "\u{3d2}"),
    ("UPSILON;", "\u{3a5}"), ("UUML;", "\u{dc}"), ("WEIERP;", "\u{2118}"), ("XI;", "\u{39e}"),
    ("YACUTE;", "\u{dd}"), ("YEN;", "\u{a5}"), ("YUML;", "\u{178}"), ("ZETA;", "\u{396}"),
    ("ZWJ;", "\u{200d}"), ("ZWNJ;", "\u{200c}"),
];
