"""Word lists the false-hit guard uses (English and Chinese).

Kept small and general on purpose: they describe the language, not the
labelled pair set. Additions belong here, with the case that needed them.
"""

from __future__ import annotations

# Words that negate what follows. English contractions are expanded first ("don't" -> "do not").
# "hardly"/"barely" are degrees, not negations ("barely warm" is warm): verification aligns them as words.
NEGATION_EN = frozenset(
    "not no never cannot without nothing nobody none neither nor nowhere".split()
)
# Prefixes that negate a word when the bare word appears on the other side ("unclear" vs "clear").
NEGATION_PREFIXES_EN = ("un", "in", "im", "ir", "il", "dis", "non")
# A Chinese word that starts with one of these negates, unless it is a listed exception.
NEGATION_ZH = ("不", "没", "無", "无", "未", "非", "别", "別", "莫", "勿", "甭", "休想", "禁止")
NEGATION_ZH_EXCEPTIONS = frozenset(
    "不错 不過 不过 不断 不少 不久 不仅 不但 不管 不如 不然 不论 不同 非常 非凡 无论 無論 未来 未來 别人 別人 别的 "
    "无聊 無聊 不得不 没错 没關係 没关系 莫非 无数 不止 不禁 不免 未必".split()
)

# Antonym pairs; each is checked both ways. Chinese entries match as substrings.
ANTONYMS_EN: tuple[tuple[str, str], ...] = (
    ("on", "off"), ("open", "close"), ("opened", "closed"), ("clean", "dirty"), ("fast", "slow"),
    ("quick", "slow"), ("delicious", "disgusting"), ("tasty", "bland"), ("cheap", "expensive"),
    ("bright", "dim"), ("bright", "dark"), ("hot", "cold"), ("warm", "cold"), ("heavy", "light"),
    ("polite", "rude"), ("friendly", "rude"), ("close", "far"), ("near", "far"), ("increase", "decrease"),
    ("raise", "lower"), ("best", "worst"), ("better", "worse"), ("good", "bad"), ("great", "terrible"),
    ("easy", "hard"), ("easy", "difficult"), ("big", "small"), ("large", "small"), ("up", "down"),
    ("happy", "sad"), ("wide", "narrow"), ("early", "late"), ("enable", "disable"), ("high", "low"),
    ("love", "hate"), ("like", "dislike"), ("safe", "dangerous"), ("in", "out"), ("correct", "wrong"),
    ("right", "wrong"), ("true", "false"), ("win", "lose"), ("won", "lost"), ("buy", "sell"),
    ("start", "stop"), ("begin", "end"), ("add", "remove"), ("accept", "reject"), ("allow", "forbid"),
    ("success", "failure"), ("succeed", "fail"), ("strong", "weak"), ("long", "short"), ("tall", "short"),
    ("new", "old"), ("young", "old"), ("rich", "poor"), ("full", "empty"), ("thick", "thin"),
    ("loud", "quiet"), ("before", "after"), ("above", "below"), ("first", "last"), ("max", "min"),
    ("maximum", "minimum"), ("more", "less"), ("more", "fewer"), ("most", "least"), ("left", "right"),
    ("north", "south"), ("east", "west"), ("import", "export"), ("upload", "download"), ("push", "pull"),
    ("positive", "negative"), ("pass", "fail"), ("agree", "disagree"), ("support", "oppose"),
    ("include", "exclude"), ("encrypt", "decrypt"), ("compress", "decompress"), ("lock", "unlock"),
    ("connect", "disconnect"), ("install", "uninstall"), ("show", "hide"), ("arrive", "depart"),
    ("wet", "dry"), ("soft", "hard"), ("sweet", "bitter"), ("love", "hated"), ("loved", "hated"),
)
ANTONYMS_ZH: tuple[tuple[str, str], ...] = (
    ("打开", "关闭"), ("开启", "关闭"), ("开", "关"), ("干净", "脏"), ("快", "慢"), ("好吃", "难吃"),
    ("好喝", "难喝"), ("好看", "难看"), ("好听", "难听"), ("好用", "难用"), ("便宜", "贵"), ("热", "冷"),
    ("重", "轻"), ("礼貌", "粗鲁"), ("热情", "冷淡"), ("近", "远"), ("高", "低"), ("增加", "减少"),
    ("提高", "降低"), ("上涨", "下跌"), ("涨", "跌"), ("最好", "最差"), ("最好", "最坏"), ("好", "坏"),
    ("好", "差"), ("容易", "难"), ("简单", "难"), ("简单", "复杂"), ("大", "小"), ("多", "少"),
    ("开心", "悲伤"), ("开心", "难过"), ("高兴", "难过"), ("快乐", "悲伤"), ("宽", "窄"), ("提前", "推迟"),
    ("提前", "延迟"), ("早", "晚"), ("喜欢", "讨厌"), ("爱", "恨"), ("安全", "危险"), ("对", "错"),
    ("正确", "错误"), ("真", "假"), ("赢", "输"), ("胜", "负"), ("买", "卖"), ("开始", "结束"),
    ("成功", "失败"), ("支持", "反对"), ("同意", "反对"), ("接受", "拒绝"), ("允许", "禁止"), ("强", "弱"),
    ("长", "短"), ("新", "旧"), ("胖", "瘦"), ("深", "浅"), ("亮", "暗"), ("满意", "失望"), ("优点", "缺点"),
    ("上", "下"), ("前", "后"), ("左", "右"), ("东", "西"), ("南", "北"), ("进", "出"), ("来", "去"),
    ("加", "减"), ("升", "降"), ("男", "女"), ("美", "丑"), ("甜", "苦"), ("厚", "薄"), ("硬", "软"),
    ("干", "湿"), ("富", "穷"), ("满", "空"), ("贵", "廉"), ("上传", "下载"), ("登录", "退出"),
    ("显示", "隐藏"), ("加密", "解密"), ("安装", "卸载"), ("连接", "断开"), ("放大", "缩小"),
    ("盈利", "亏损"), ("赚", "亏"), ("优秀", "糟糕"), ("精彩", "无聊"), ("积极", "消极"), ("乐观", "悲观"),
)

# English number words -> value ("a dozen" is left alone: rare, ambiguous).
NUMBER_WORDS_EN = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
     "hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000,
     "first": 1, "second": 2, "third": 3, "half": 0.5, "double": 2, "twice": 2, "triple": 3}

ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6,
             "七": 7, "八": 8, "九": 9, "半": 0.5}
ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "萬": 10_000, "亿": 100_000_000, "億": 100_000_000}
# Words with a numeral that is not a quantity.
ZH_NUMBER_EXCEPTIONS = frozenset(
    "一下 一些 一点 一點 一起 一样 一樣 一直 一定 一般 一切 万一 萬一 统一 唯一 一会 一會 一边 之一 一旦 一向 "
    "一共 一味 一致 一再 一同 一律 一面 专一 第一 一口气 千万 万万 三心二意 一模一样 一般般 一路 十分 万分 百分之百 "
    "百分之".split()
)

# Proper-noun tags of jieba's part-of-speech dictionary: places, people, organisations, other names.
# ("nz", other proper nouns, is left out: jieba gives it to common words such as 美味.)
ZH_ENTITY_TAGS = frozenset({"ns", "nr", "nrt", "nrfg", "nt"})
# Common names the dictionary tags as plain nouns.
ZH_ENTITIES_EXTRA = frozenset("苹果公司 小米 苹果 故宫 微软 谷歌 亚马逊 特斯拉 三星 索尼 华为 百度 京东 淘宝 微信 抖音".split())

# Words that are capitalised in English text without being names.
EN_NOT_ENTITIES = frozenset(
    "i i'm i'd i'll i've ok okay mr mrs ms dr please hi hello hey thanks thank yes no".split()
)


# ---- Verification (verify.py): closed word classes and function words ----------------------
# Closed classes are small and complete by nature (pronouns, question words, quantifiers, modals,
# relation words, units, time words), so listing them describes the language, not a pair set.
# Each word maps to (concept, class): words with the same concept are the same word.


def _closed(cls: str, groups: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {w: (f"{cls}.{concept}", cls) for concept, ws in groups.items() for w in ws.split()}


CLOSED_CLASS: dict[str, tuple[str, str]] = {
    # One key per person, whatever the case: "I need a recipe" / "give me a recipe". Who does what
    # to whom is the order check's business ("I owe him" / "he owes me": a swap around "owe").
    **_closed("pronoun", {
        "1": "i me my mine myself 我 俺", "1pl": "we us our ours ourselves 我们 咱们 咱",
        "2": "you your yours yourself 你 您", "2pl": "yourselves 你们", "3m": "he him his himself 他",
        "3f": "she her hers herself 她", "3pl": "they them their theirs themselves 他们 她们 它们",
    }),
    **_closed("question", {
        "what": "what which 什么 啥 哪个 哪些 什么样", "how": "how 怎么 如何 怎样 怎么样 咋 怎么办 咋办",
        "why": "why 为什么 为何 为啥 怎么回事", "when": "when 什么时候 何时 几时", "where": "where 哪里 哪儿 在哪 哪 何处",
        "who": "who whom 谁", "whose": "whose", "howmany": "多少 几", "howlong": "多久 多长时间",
    }),
    **_closed("quantifier", {
        "all": "all every each entire whole 所有 全部 每 每个 一切 全 都", "any": "any 任何", "most": "most 大多数 大部分 多数",
        "many": "many much 许多 很多 大量", "few": "few 很少 少数", "always": "always 总是 一直 始终 永远",
        "often": "often usually normally frequently 经常 常常 通常 往往", "sometimes": "sometimes occasionally 有时 有时候 偶尔",
        "rarely": "rarely seldom 很少 难得", "only": "only solely 只 只有 仅 仅仅 只是",
    }),
    # Obligation said or left unsaid asks the same ("how do I" / "how should I"); possibility does not.
    # "should" advises, "must" requires: "should I tell my employer?" / "must I tell my employer?" differ.
    **_closed("obligation", {"must": "must need needs 必须 一定 务必 需要 需 得要", "should": "should ought 应该 应当 该"}),
    **_closed("modal", {"may": "may might 可能 也许 或许"}),
    **_closed("relation", {
        "to": "to into onto 到 至", "from": "from 从", "toward": "toward towards 往 向 朝", "than": "than 比",
        "before": "before 之前 以前", "after": "after 之后 以后 后", "until": "until till 直到", "since": "since 自从",
        "against": "against", "except": "except 除了", "per": "per", "via": "via 经过",
        "between": "between 之间", "above": "above over 以上 超过", "below": "below under 以下 低于",
        "within": "within 以内 之内", "inside": "inside 里面 内部", "off": "off", "out": "out outside 外面",
        "by": "by 被", "vs": "vs versus",
    }),
    **_closed("unit", {
        "km": "km kms kilometer kilometers kilometre kilometres 公里 千米", "mi": "mile miles 英里",
        "m": "meter meters metre metres 米", "cm": "cm centimeter centimeters 厘米", "mm": "mm millimeter millimeters 毫米",
        "in": "inch inches 英寸", "ft": "ft foot feet 英尺", "yd": "yard yards 码",
        "kg": "kg kgs kilo kilos kilogram kilograms 公斤 千克", "jin": "斤", "g": "g gram grams 克",
        "lb": "lb lbs pound pounds 磅", "oz": "oz ounce ounces 盎司", "t": "ton tons tonne tonnes 吨",
        "l": "l liter liters litre litres 升", "ml": "ml milliliter milliliters millilitre millilitres 毫升",
        "cup": "cup cups 杯", "tbsp": "tbsp tablespoon tablespoons 汤匙 大勺", "tsp": "tsp teaspoon teaspoons 茶匙 小勺",
        "gal": "gallon gallons 加仑", "qt": "quart quarts", "pt": "pint pints 品脱",
        "c": "celsius °c ℃ 摄氏度 摄氏", "f": "fahrenheit °f ℉ 华氏度 华氏", "deg": "degree degrees 度",
        "h": "hour hours hr hrs 小时 钟头", "min": "minute minutes mins 分钟", "s": "seconds sec secs 秒 秒钟",
        "day": "day days 天", "week": "week weeks 周 星期 礼拜", "month": "month months 月", "year": "year years 年",
        "usd": "dollar dollars usd 美元 美金", "eur": "euro euros eur 欧元", "cny": "yuan rmb cny 元 人民币 块钱",
        "gbp": "gbp 英镑", "jpy": "yen jpy 日元", "pct": "percent percentage % 百分之",
        "gb": "gb gigabyte gigabytes", "mb": "mb megabyte megabytes", "tb": "tb terabyte terabytes",
        "mph": "mph", "kmh": "kmh kph", "w": "watt watts 瓦", "kwh": "kwh 度电", "acre": "acre acres 亩",
    }),
    **_closed("time", {
        "today": "today 今天 今日", "tomorrow": "tomorrow 明天 明日", "yesterday": "yesterday 昨天 昨日",
        "tonight": "tonight 今晚", "morning": "morning 早上 上午 早晨", "noon": "noon midday 中午",
        "afternoon": "afternoon 下午", "evening": "evening 傍晚", "night": "night 晚上 夜里 夜晚",
        "weekend": "weekend weekends 周末", "weekday": "weekday weekdays 工作日", "now": "now currently 现在 目前",
        "later": "later 稍后", "soon": "soon 马上 很快", "ago": "ago", "last": "last previous 上次 上个 上周 去年 上个月",
        "next": "next upcoming 下次 下个 下周 明年 下个月", "this": "今年 本周 这周 这个月 本月",
        "mon": "monday mondays 周一 星期一 礼拜一", "tue": "tuesday tuesdays 周二 星期二 礼拜二",
        "wed": "wednesday wednesdays 周三 星期三 礼拜三", "thu": "thursday thursdays 周四 星期四 礼拜四",
        "fri": "friday fridays 周五 星期五 礼拜五", "sat": "saturday saturdays 周六 星期六 礼拜六",
        "sun": "sunday sundays 周日 周天 星期日 星期天 礼拜天",
        # (May is left out: the word is also the modal.)
        "jan": "january", "feb": "february", "mar": "march", "apr": "april", "jun": "june", "jul": "july",
        "aug": "august", "sep": "september", "oct": "october", "nov": "november", "dec": "december",
        "spring": "spring 春天 春季", "summer": "summer 夏天 夏季", "autumn": "autumn 秋天 秋季",
        "winter": "winter 冬天 冬季", "daily": "daily 每天 每日 天天", "weekly": "weekly 每周 每星期",
        "monthly": "monthly 每月", "yearly": "yearly annually annual 每年", "past": "past 过去", "future": "future 将来 未来",
    }),
}
# Tense markers: a past and a future reading of one request are two requests ("when did it open" /
# "when will it open"); a request that marks no tense on one side is not told apart.
PAST_EN = frozenset("did was were had".split())
FUTURE_EN = frozenset("will shall".split())
# English subject pronouns: the same person as subject on one side and object on the other
# ("my brother owes *me*" / "*I* owe my brother") is allowed only where no word changes place.
SUBJECT_PRONOUNS = frozenset("i we he she they".split())
# A word of these classes present on one side only is tolerated (requests are phrased with or
# without "you", "how" or "to"); a substitution within a class never is.
OPTIONAL_CLASSES = frozenset({"pronoun", "question", "relation", "obligation"})
# Relations that contradict each other: only these may not stand in for one another
# ("fly *from* London to New York" / "London *to* New York" is one request; to/from is not).
RELATION_CONTRASTS = frozenset({
    frozenset({"relation.to", "relation.from"}), frozenset({"relation.before", "relation.after"}),
    frozenset({"relation.above", "relation.below"}), frozenset({"relation.inside", "relation.out"}),
    frozenset({"relation.toward", "relation.from"}), frozenset({"relation.since", "relation.until"}),
})

# Casual spellings, expanded before anything else looks at the words.
CASUAL_EN: dict[str, tuple[str, ...]] = {
    "cant": ("can", "not"), "dont": ("do", "not"), "doesnt": ("does", "not"), "didnt": ("did", "not"),
    "isnt": ("is", "not"), "arent": ("are", "not"), "wasnt": ("was", "not"), "werent": ("were", "not"),
    "couldnt": ("could", "not"), "shouldnt": ("should", "not"), "wouldnt": ("would", "not"),
    "havent": ("have", "not"), "hasnt": ("has", "not"), "hadnt": ("had", "not"), "aint": ("is", "not"),
    "wont": ("will", "not"), "im": ("i",), "ive": ("i",), "youre": ("you",), "theyre": ("they",),
    "whats": ("what",), "hows": ("how",), "wheres": ("where",), "whos": ("who",), "thats": ("that",),
    "u": ("you",), "ur": ("your",), "pls": ("please",), "plz": ("please",), "thx": ("thanks",), "ty": ("thanks",),
    "gonna": ("going", "to"), "wanna": ("want", "to"), "gotta": ("have", "to"), "shld": ("should",),
    "cld": ("could",), "wld": ("would",), "abt": ("about",), "cuz": ("because",), "coz": ("because",),
    "bc": ("because",), "b4": ("before",), "tmrw": ("tomorrow",), "tmr": ("tomorrow",), "thru": ("through",),
    "yr": ("year",), "yrs": ("years",), "mo": ("month",), "wk": ("week",), "wks": ("weeks",), "hr": ("hour",),
    "cannot": ("can", "not"), "info": ("information",), "pic": ("picture",), "pics": ("pictures",), "approx": ("approximately",),
}
# A question asked about a manner ("what's the way to X", "X的方法是什么") asks how; about a
# reason ("what causes X", "是什么原因") asks why. These nouns then carry nothing of their own,
# nor does a plain "good" before a manner noun ("a good way to", "好办法"); "best" still does.
MANNER_NOUNS = frozenset(
    "way ways method methods process procedure steps step approach tips tip advice suggestions trick tricks "
    "方法 办法 步骤 流程 方式 法子 招 窍门 技巧 建议 诀窍 做法 办法呢".split()
)
REASON_NOUNS = frozenset("cause causes reason reasons 原因 缘故 缘由".split())
PLAIN_GOOD = frozenset("good 好 什么好".split())
# After "how" (怎么/如何), a verb that only says "deal with it" asks nothing more: 怎么办 = 怎么处理 = 怎么解决.
ZH_HOW_VERBS = frozenset("处理 解决 应对 办 弄 搞".split())
# Pairs of words that together are a filler ("quick question: ...", "thanks in advance").
FILLER_PAIRS_EN = frozenset({("quick", "question"), ("in", "advance"), ("just", "wondering")})
# Irregular English verb forms -> the base form (the stemmer only knows regular endings).
IRREGULAR_EN = {
    form: base
    for base, forms in {
        "be": "was were been", "have": "had", "do": "did done", "go": "went gone", "get": "got gotten",
        "make": "made", "take": "took taken", "give": "gave given", "write": "wrote written", "see": "saw seen",
        "come": "came", "know": "knew known", "think": "thought", "tell": "told", "say": "said", "find": "found",
        "buy": "bought", "bring": "brought", "teach": "taught", "catch": "caught", "fight": "fought",
        "feel": "felt", "keep": "kept", "sleep": "slept", "send": "sent", "spend": "spent", "build": "built",
        "pay": "paid", "sell": "sold", "hold": "held", "stand": "stood", "understand": "understood", "run": "ran",
        "begin": "began begun", "drink": "drank drunk", "eat": "ate eaten", "drive": "drove driven",
        "ride": "rode ridden", "speak": "spoke spoken", "break": "broke broken", "choose": "chose chosen",
        "forget": "forgot forgotten", "freeze": "froze frozen", "steal": "stole stolen", "wake": "woke woken",
        "wear": "wore worn", "grow": "grew grown", "throw": "threw thrown", "fly": "flew flown", "draw": "drew drawn",
        "fall": "fell fallen", "hide": "hid hidden", "shake": "shook shaken", "sing": "sang sung", "swim": "swam swum",
        "meet": "met", "sit": "sat", "lend": "lent", "mean": "meant", "hear": "heard", "shoot": "shot",
        "feed": "fed", "lead": "led", "win": "won", "lose": "lost", "bite": "bit bitten", "ring": "rang rung",
    }.items()
    for form in forms.split()
}
# Relations whose two sides can trade places without changing the request ("A vs B").
SYMMETRIC = frozenset({
    "relation.vs", "relation.between", "and", "or", "but", "though", "although", "however", "yet",
    "和", "与", "跟", "及", "或", "或者", "还是", "但是", "但", "不过", "可是", "然而", "而",
})

# Words that carry no request of their own: articles, auxiliaries, conjunctions, politeness, fillers.
FUNCTION_WORDS_EN = frozenset(
    "a an the this that these those is am are was were be been being do does did doing can could would will "
    "shall have has had having and or but so if then also too as of for with about please kindly just really "
    "actually basically very quite there here want wanna wonder wondering know tell let hi hello hey thanks "
    "thank ok okay yes um umm uh hmm some someone anyone somebody anybody possible way ways get getting give show "
    "any it its at in on help whether truly extremely absolutely totally super incredibly genuinely seriously even though although however yet because since exactly explain describe suggest recommend list provide share".split()
)
FUNCTION_WORDS_ZH = frozenset(
    "的 地 得 了 着 过 吗 呢 吧 啊 呀 哦 嘛 么 哈 呗 啦 喔 嗯 是 在 有 和 与 跟 及 或 或者 还是 请 请问 麻烦 帮 帮忙 "
    "帮我 一下 一点 一点儿 下 能 能否 可以 可不可以 能不能 会 想 想要 要 知道 告诉 问 问下 问一下 个 这 那 这个 那个 "
    "这些 那些 这款 那款 这种 那种 这样 那样 款 种 些 很 挺 真 太 非常 特别 十分 比较 还 也 就 又 才 您好 你好 谢谢 "
    "多谢 一些 有没有 有什么 样 给 让 把 叫 什么的 呃 是不是 对吧 好吗 行吗 可以吗 关于 对于 对 一个 "
    "起来 实在 确实 相当 嗨 哈喽 里 中 上 内 求助 求 谢啦 谢了 谢 来着 等于 但是 但 不过 可是 然而 而 因为 所以 即使 虽然 就是 格外 尤其 蛮 推荐 介绍 列举 列出 说说 讲讲 解释 说明 给出 提供 分享 它 它的 "
    "如果 的话 要是 假如 请教 在线等 急 来着 已经 嗯嗯 哎".split()
)
# Matched words too common to anchor a swap on their own: they count only when they are the one
# word between the two that traded places ("a square *a* rectangle").
WEAK_ANCHORS = frozenset("a an the 的 地 得 了 着 过 吗 呢 吧 啊 呀".split())
# Leading degree words and trailing particles stripped from a Chinese word before it is compared (真不错 = 不错).
ZH_PREFIX_CHARS = frozenset("很挺真太")
ZH_SUFFIX_CHARS = frozenset("的了吗呢吧啊呀哦啦")
# Antonyms never stand in for each other, however close their embeddings (hot/cold).
ANTONYM_SET = frozenset(ANTONYMS_EN) | frozenset(ANTONYMS_ZH)
